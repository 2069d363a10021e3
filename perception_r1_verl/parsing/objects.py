"""Objects out of answer text: strict JSON first, then a scanner for what only looks like it.

Every balanced ``{...}`` (string- and nesting-aware) is parsed alone; trailing commas and
Python literals are repaired only when strict parsing fails, and only for objects under
``_LITERAL_MAX`` characters. Cost is bounded by construction (``parsing``'s caps, no
pattern with nested quantifiers).
"""

from __future__ import annotations

import ast
import bisect
import json
import re

import numpy as np
import orjson

from .answer import MAX_ITEMS, Answer, _Collector, _number, valid_text

_LITERAL_MAX = 4096  # one detection item is under 200 characters
_FAST_MIN = 5
# What the object scanner stops at: a brace, or a whole "..." string (one that is not
# closed ends at its line: JSON strings hold no raw newline, so a stray quote spoils one line).
_SCAN = re.compile(r'[{}]|"(?:[^"\\\n]|\\.)*"?')
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_PYTHON_MARKS = re.compile(r"'|\b(?:True|False|None)\b|\(")  # quotes, constants, tuples


def _parse_json(body: str, answer: Answer) -> bool:
    """Fill ``answer`` from strict JSON text; False when a strict parser rejects it."""
    fast = True
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses lone surrogates, escaped ("\\ud800") or raw; JSON allows the
        # first, and the second is a caller's decoding: neither is the answer's fault.
        data = _strict_json(valid_text(body)) if "\\u" in body or not body.isascii() else None
        if data is None:
            return False
        fast = False  # its labels may hold lone surrogates: the item path replaces them
    if (type(data) is list and len(data) == 4 and all(map(_number, data))) or type(data) is dict:
        _items([data], answer)  # one bare box, one object
    elif type(data) is list:
        # Below _FAST_MIN items numpy's fixed cost exceeds the item path's (bench_rewards).
        if not (fast and len(data) >= _FAST_MIN and _fast_boxes(data, body, answer)):
            _items(data, answer)
    else:
        return False
    return True


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _strict_json(text: str):
    """``json.loads`` without its NaN/Infinity extension, or None."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None


def _items(data: list, answer: Answer) -> None:
    """The general path: a JSON list read item by item."""
    col = _Collector()
    for obj in data:
        col.add_object(obj)
    col.into(answer)
    answer.style = "json"


def _fast_boxes(data: list, body: str, answer: Answer) -> bool:
    """The common case, vectorised: a list of ``{"bbox_2d": [4 numbers], "label": str}``.

    Returns False (leaving :func:`_items` to decide) on anything else; where it returns
    True, its result is :func:`_items`' (a differential test checks it). JSON booleans
    and nulls would pass numpy's conversion, so their presence forces that path; orjson
    yields no NaN or infinity, so finiteness needs no check.
    """
    if not data or len(data) > MAX_ITEMS or "true" in body or "false" in body or "null" in body:
        return False
    try:
        boxes = np.array([obj["bbox_2d"] for obj in data])
    except (TypeError, KeyError, ValueError, OverflowError):  # not dicts, no bbox_2d, ragged lists
        return False
    kind = boxes.dtype.kind
    if (kind != "f" and kind != "i") or boxes.shape != (len(data), 4):
        return False
    if kind == "i":
        boxes = boxes.astype(np.float64)
    good = (boxes[:, 0] <= boxes[:, 2]) & (boxes[:, 1] <= boxes[:, 3])
    labels = [label if type(label := obj.get("label")) is str else None for obj in data]
    answer.n_items = len(data)
    if not good.all():
        answer.n_invalid = len(data) - int(good.sum())
        boxes = boxes[good]
        labels = [label for label, ok in zip(labels, good.tolist()) if ok]
    answer.boxes, answer.labels, answer.style = boxes, labels, "json"
    return True


def _lenient(span: str):
    """One ``{...}`` parsed strictly, else with trailing commas dropped, else as a Python
    literal (single quotes, ``True``/``None``); ``None`` when nothing reads it."""
    try:
        return orjson.loads(span)
    except orjson.JSONDecodeError:
        pass
    fixed = _TRAILING_COMMA.sub(r"\1", span)
    if fixed != span:
        try:
            return orjson.loads(fixed)
        except orjson.JSONDecodeError:
            pass
    if len(fixed) > _LITERAL_MAX or not _PYTHON_MARKS.search(fixed):
        return None  # too long to be one item, or nothing a Python literal has and JSON lacks
    try:
        return ast.literal_eval(fixed)
    except Exception:  # literal_eval reads untrusted text: any failure means "not a literal"
        return None


def scan_objects(body: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[int]]:
    """The outermost balanced ``{...}`` of ``body``: ``(free, enclosed, open_braces)``.

    ``free`` spans are inside no other brace, ``enclosed`` ones inside a ``{`` that is
    never closed (a broken or cut object, a stray brace); ``open_braces`` are the
    positions of those. Braces inside ``"..."`` strings do not count.

    >>> scan_objects('[{"a": {"b": "}"}}, {, {"c": 1}')
    ([(1, 18)], [(23, 31)], [20])
    """
    stack, spans = [], []
    for m in _SCAN.finditer(body):
        c = body[m.start()]
        if c == "{":
            stack.append(m.start())
        elif c == "}" and stack:
            start = stack.pop()
            spans.append((start, m.end(), bool(stack)))
    free, enclosed, end = [], [], -1
    for start, stop, inside in sorted(spans):  # nested spans come after their parent: skip them
        if start >= end:
            (enclosed if inside else free).append((start, stop))
            end = stop
    return free, enclosed, stack


def _read_broken(segment: str, p: int, open_braces: list[int], k: int):
    """The object a never-closed ``{`` (at ``p``, ``open_braces[k]``) starts, with the
    braces left open closed: as written, without the list's ``]``, or up to its last
    comma (an object cut inside a nested value keeps what came before); None if none reads."""
    cut = segment.rfind(",")
    for text in (segment, segment[:-1] if segment.endswith("]") else None, segment[:cut] if cut > 0 else None):
        if text is None:
            continue
        text = text.rstrip().rstrip(",")
        obj = _lenient(text + "}" * (bisect.bisect_left(open_braces, p + len(text)) - k))
        if obj is not None:
            return obj
    return None


def _parse_scanned(body: str, answer: Answer, bracketed: bool) -> bool:
    """Fill ``answer`` from the objects :func:`scan_objects` finds; False when there are
    none and the body does not even start like JSON (then it is not a JSON answer)."""
    body = valid_text(body)  # a lone surrogate breaks orjson and literal_eval alike
    free, enclosed, open_braces = scan_objects(body)
    items = []  # (position, object or None), in the order the model wrote them
    for (start, stop), inside in sorted([(s, False) for s in free] + [(s, True) for s in enclosed]):
        if len(items) > MAX_ITEMS:  # spam: counted as items, not parsed
            items.append((start, None))
            continue
        obj = _lenient(body[start:stop])
        # A complete value inside a broken object is part of it, not an item of its own.
        if inside and not (type(obj) is dict and ("bbox_2d" in obj or "point_2d" in obj)):
            continue
        if obj is None and not bracketed and not items:
            continue  # "{...}" in prose before any object
        items.append((start, obj))
    starts = [start for start, _ in items]
    # Each brace never closed is a broken item, read up to the next item with the braces
    # it left open closed (a missing "}"); one nested in the previous brace with no item
    # between them is the same broken object.
    broken = [
        k
        for k, p in enumerate(open_braces)
        if k == 0 or bisect.bisect(starts, open_braces[k - 1]) < bisect.bisect(starts, p)
    ]
    for n, k in enumerate(broken):
        p = open_braces[k]
        i = bisect.bisect(starts, p)
        stop = min(
            starts[i] if i < len(starts) else len(body),
            open_braces[broken[n + 1]] if n + 1 < len(broken) else len(body),
        )
        segment = body[p:stop].rstrip().rstrip(",")
        if not segment[1:].strip():
            continue  # a lone "{" typed before the next object: a typo, not an item
        items.append((p, _read_broken(segment, p, open_braces, k) if len(items) <= MAX_ITEMS else None))
    if not items and not bracketed:
        return False
    col = _Collector()
    for _, obj in sorted(items, key=lambda item: item[0]):
        col.add_object(obj)
    col.into(answer)
    # Cut off: the text stops inside an object, or inside the list after its last object.
    last = starts[-1] if starts else -1
    end = max((stop for _, stop in free + enclosed), default=0)
    open_at_end = bool(open_braces and open_braces[-1] > last) or (body.startswith("[") and "]" not in body[end:])
    answer.truncated = open_at_end and not body.endswith(("]", "}"))
    answer.style, answer.repaired = "json", True
    return True
