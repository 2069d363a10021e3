"""Parse the answers Qwen-VL models really emit (writing them: ``rewards.render``).

Accepted answer styles (``Answer.style``):

- ``json``: Qwen2.5-VL / Qwen3-VL objects ``[{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}]``
  (also ``point_2d``), fenced in ```json or bare, a single object, or a bare list of
  boxes;
- ``box_tokens``: Qwen2-VL ``<|object_ref_start|>cat<|object_ref_end|><|box_start|>(x1,y1),
  (x2,y2)<|box_end|>``, and ``<|box_start|>(x,y)<|box_end|>`` for a point;
- ``ref_box``: the same in Qwen-VL's tags, ``<ref>cat</ref><box>(x1,y1),(x2,y2)</box>``;
  in both, a box takes the label of the last ref before it;
- ``plain``: ``[x1, y1, x2, y2]`` or ``(x1,y1),(x2,y2)`` inside other text (the latter is
  what Qwen2-VL box tokens become when a decoder drops special tokens).

Any of them may sit inside ``<answer>...</answer>`` and, when the prompt asks for
thinking, after a ``<think>...</think>`` block; end tokens a decoder kept
(``END_TOKENS``) are dropped; several fenced blocks are read one after the other.

Reading is lenient, paying format is not. JSON that a strict parser (orjson) accepts takes
the fast path. Anything else that holds ``{`` goes to a scanner that finds every balanced
``{...}`` (string- and nesting-aware) and parses each alone, repairing trailing commas and
Python literals (single quotes, ``True``/``None``) only when strict parsing fails: JSON
after or before prose, a stray brace or a broken object in a long list, objects with
nested values; coordinates written as strings are read too. What needed a repair keeps
its boxes and labels but is marked ``repaired``, which the format reward does not pay. A
completion cut off at the length limit keeps its complete objects and is marked
``truncated``. Parsing never raises.
"""

from __future__ import annotations

import ast
import bisect
import json
import math
import re
import sys
from dataclasses import dataclass, field

import numpy as np
import orjson

MAX_ITEMS = 1000  # more objects than any image holds: the rest is spam and is only counted
# Hard caps on the work one completion can cause (a policy in a repetition loop writes
# anything): characters read, fenced blocks read, and the size of one object a Python
# literal parser may compile. What lies beyond the first two counts as truncation.
MAX_CHARS = 65536  # 8x a 2048-token response of 4-character tokens
MAX_BLOCKS = 64
_LITERAL_MAX = 4096  # one detection item is under 200 characters
_FAST_MIN = 5
# Special tokens that end a Qwen-VL turn, kept by callers that decode with special tokens.
END_TOKENS = ("<|im_end|>", "<|endoftext|>")
# Untrusted text meets only patterns without nested or overlapping quantifiers (each
# character is looked at a bounded number of times); the rest is str.find scanning.
_NUM = r"-?\d+(?:\.\d+)?"
_NUMBER = re.compile(_NUM)
_THINK = re.compile(r"\s*<think>.*?</think>\s*", re.S)
_ANSWER = re.compile(r"<answer>(.*?)(</answer>|$)", re.S)
# A fence opens a line (as markdown has it, and the Qwen cookbooks' parse_json reads it):
# "```" inside a JSON string is text.
_FENCE_OPEN = re.compile(r"^[ \t]*```[a-zA-Z]*", re.M)
# A markdown page (```markdown, ```md) holds code blocks of its own: inside it a fence line
# with a language opens an inner block and a bare fence line closes the innermost, as a
# human reads the page (CommonMark would end the page at the inner block's closer).
_MARKDOWN_FENCES = frozenset({"markdown", "md"})
_FENCE_LINE = re.compile(r"^[ \t]*```([a-zA-Z]*)[ \t]*$", re.M)
BARE_COUNT_DIGITS = 6  # a count the size of any image's objects, not a number spilled out


# A box's insides after its open tag: one or two "(x, y)" pairs, then the close tag. Anchored
# at a box tag and made only of spaces, digits and punctuation, so a failed match stops
# before the next tag: the matches of all tags together read each character about once.
_PAIR = rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)"
# Qwen2-VL's special tokens, and the Qwen-VL tags they replaced (still what its checkpoints
# write): ref open and close, box open and close, the pattern of a box's insides and close.
_TAG_STYLES = {
    style: (*tags, re.compile(rf"\s*{_PAIR}(?:\s*,\s*{_PAIR})?\s*{re.escape(tags[3])}"))
    for style, tags in (
        ("box_tokens", ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>")),
        ("ref_box", ("<ref>", "</ref>", "<box>", "</box>")),
    )
}
_PLAIN_BOX = re.compile(
    rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]"
    rf"|\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)"
)
# What the object scanner stops at: a brace, or a whole "..." string (one that is not
# closed ends at its line: JSON strings hold no raw newline, so a stray quote spoils one line).
_SCAN = re.compile(r'[{}]|"(?:[^"\\\n]|\\.)*"?')
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_PYTHON_MARKS = re.compile(r"'|\b(?:True|False|None)\b|\(")  # quotes, constants, tuples
_FLOAT_MAX = sys.float_info.max  # Python ints beyond it do not convert to float
_EMPTY_BOXES = np.zeros((0, 4))
_EMPTY_POINTS = np.zeros((0, 2))


@dataclass(slots=True)
class Answer:
    """What a completion says, in the model's answer frame.

    ``boxes`` holds the well-formed boxes (x1 <= x2, y1 <= y2, finite) with their
    ``labels`` (``None`` where the item had none); ``points`` the ``point_2d`` items.
    ``n_items`` counts every object the model emitted, ``n_invalid`` those that were
    malformed (wrong arity, non-numbers, inverted boxes, non-finite values, objects no
    repair could read). ``repaired``: the answer is not valid JSON as it stands and was
    read by the lenient scanner; ``truncated``: it was cut off.
    """

    text: str = ""
    style: str = "none"
    boxes: np.ndarray = field(default_factory=lambda: _EMPTY_BOXES)
    labels: list = field(default_factory=list)
    points: np.ndarray = field(default_factory=lambda: _EMPTY_POINTS)
    n_items: int = 0
    n_invalid: int = 0
    truncated: bool = False
    tags_ok: bool = True
    repaired: bool = False

    @property
    def parsed(self) -> bool:
        """Whether the completion holds an answer in any recognised style (``[]`` counts)."""
        return self.style != "none"


def _number(v) -> bool:
    t = type(v)
    return (t is float and math.isfinite(v)) or (t is int and -_FLOAT_MAX <= v <= _FLOAT_MAX)


def _box(v):
    """A well-formed ``[x1, y1, x2, y2]`` as floats, else None."""
    if type(v) is list and len(v) == 4 and all(map(_number, v)) and v[0] <= v[2] and v[1] <= v[3]:
        return v
    return None


def _numbers_in_strings(v: list) -> list | None:
    """Coordinates written as strings, ``["38", "314"]`` or ``["243, 291"]``, as numbers;
    None when some string is not just numbers (separated by spaces and at most one comma).

    >>> _numbers_in_strings(["243, 291", 5]), _numbers_in_strings(["1,,2"]), _numbers_in_strings(["1 x"])
    ([243.0, 291.0, 5], None, None)
    """
    out = []
    for x in v:
        if type(x) is not str:
            out.append(x)
            continue
        for chunk in x.split(","):  # str.split: linear, where a regex of optional separators backtracks
            words = chunk.split()
            if not words or not all(_NUMBER.fullmatch(w) for w in words):
                return None
            out += map(float, words)
    return out


def valid_text(text: str) -> str:
    """``text`` with lone surrogates (which no encoder accepts) replaced by U+FFFD.

    >>> valid_text("cat\\ud800"), valid_text("\\ud83d\\ude00")
    ('cat�', '😀')
    """
    if text.isascii():
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class _Collector:
    """Accumulates items into an Answer; one place for the validity rules."""

    __slots__ = ("boxes", "labels", "points", "n_items", "n_invalid", "repaired")

    def __init__(self):
        self.boxes, self.labels, self.points = [], [], []
        self.n_items = self.n_invalid = 0
        self.repaired = False

    def _repair(self, v):
        """The numbers of coordinates written as strings (a repair), else None."""
        if type(v) is list and any(type(x) is str for x in v):
            fixed = _numbers_in_strings(v)
            if fixed is not None:
                self.repaired = True
                return fixed
        return None

    def add_box(self, box, label=None):
        self.n_items += 1
        if self.n_items > MAX_ITEMS:
            return  # counted as invalid in into()
        good = _box(box)
        if good is None:
            good = _box(self._repair(box))
        if good is None:
            self.n_invalid += 1
        else:
            self.boxes.append(good)
            self.labels.append(valid_text(label) if type(label) is str else None)

    def add_point(self, point):
        self.n_items += 1
        if self.n_items > MAX_ITEMS:
            return
        if not (type(point) is list and len(point) == 2 and all(map(_number, point))):
            point = self._repair(point)
        if point is not None and len(point) == 2 and all(map(_number, point)):
            self.points.append(point)
        else:
            self.n_invalid += 1

    def add_object(self, obj):
        if type(obj) is dict:
            if "bbox_2d" in obj:
                self.add_box(obj["bbox_2d"], obj.get("label"))
            else:
                self.add_point(obj.get("point_2d"))
        elif type(obj) is list and len(obj) == 4:
            self.add_box(obj)
        else:
            self.add_point(None)  # an item, of no use

    def into(self, answer: Answer) -> Answer:
        # Items past MAX_ITEMS are spam: counted as emitted and as invalid.
        answer.n_items = self.n_items
        answer.n_invalid = self.n_invalid + max(0, self.n_items - MAX_ITEMS)
        answer.repaired = answer.repaired or self.repaired
        if self.boxes:
            answer.boxes = np.array(self.boxes, dtype=np.float64)
            answer.labels = self.labels
        if self.points:
            answer.points = np.array(self.points, dtype=np.float64)
        return answer


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


def _parse_tags(body: str, answer: Answer, style: str) -> None:
    """Boxes (and points: one pair) in ``style``'s tags; each takes the label of the last
    ref before it, as in Qwen-VL's ``<ref>two apples</ref><box>...</box><box>...</box>``.

    A scanner: each step jumps (``str.find``) to the next ref or box tag. A ref takes the
    text up to its close tag (boxes inside it are part of the label); once a ref has no
    close tag, no later one has, so refs stop being looked for.
    """
    ref_open, ref_close, box_open, box_close, box_rest = _TAG_STYLES[style]
    col = _Collector()
    label, pos, refs = None, 0, True
    while col.n_items < MAX_ITEMS:
        b = body.find(box_open, pos)
        r = body.find(ref_open, pos, b if b >= 0 else len(body)) if refs else -1
        if r >= 0:
            end = body.find(ref_close, r + len(ref_open))
            if end >= 0:
                label, pos = body[r + len(ref_open) : end].strip(), end + len(ref_close)
                continue
            refs = False
        if b < 0:
            break
        m = box_rest.match(body, b + len(box_open))
        if m is None:
            pos = b + len(box_open)
            continue
        x1, y1, x2, y2 = m.groups()
        if x2 is None:
            col.add_point([float(x1), float(y1)])
        else:
            col.add_box([float(x1), float(y1), float(x2), float(y2)], label)
        pos = m.end()
    # Box starts that did not form a complete box are malformed or cut off, those past
    # MAX_ITEMS spam (not read): all are items and invalid, the spam counted in into().
    rest = body.count(box_open) - col.n_items
    col.n_items += rest
    col.n_invalid += max(0, rest - max(0, col.n_items - MAX_ITEMS))
    answer.truncated = body.rfind(box_open) > body.rfind(box_close)
    answer.style = style
    col.into(answer)


def _parse_plain(body: str, answer: Answer) -> None:
    col = _Collector()
    for m in _PLAIN_BOX.finditer(body):
        g = m.groups()
        col.add_box([float(v) for v in (g[:4] if g[0] is not None else g[4:])])
    if col.n_items:
        answer.style = "plain"
        col.into(answer)


def _parse_body(body: str, answer: Answer) -> None:
    bracketed = body.startswith(("[", "{"))
    if bracketed and _parse_json(body, answer):
        return  # first: a JSON label may hold "<box>"
    if "<|box_start|>" in body:
        _parse_tags(body, answer, "box_tokens")
        return
    if "<box>" in body:
        _parse_tags(body, answer, "ref_box")
        return
    if "{" in body and _parse_scanned(body, answer, bracketed):
        return
    _parse_plain(body, answer)


def _strip_end_tokens(text: str) -> str:
    """``text`` without trailing end tokens and spaces (an index walks back: no copy per token).

    >>> _strip_end_tokens("[1] <|im_end|>\\n<|endoftext|>")
    '[1]'
    """
    end = len(text)
    while True:
        while end and text[end - 1].isspace():
            end -= 1
        token = next((t for t in END_TOKENS if text.endswith(t, 0, end)), None)
        if token is None:
            return text[:end]
        end -= len(token)


def answer_parts(completion: str, think: bool = False) -> tuple[list[str], bool, bool]:
    """The answer bodies of a completion (one per fenced block, else one), whether its
    tags are as asked, and whether it was cut. Trailing ``END_TOKENS`` are dropped.

    >>> answer_parts("<think>two cats</think><answer>[1, 2, 3, 4]</answer><|im_end|>", think=True)
    (['[1, 2, 3, 4]'], True, False)
    >>> answer_parts("```json\\n[1, 2, 3, 4]\\n```\\n```json\\n[5, 6")
    (['[1, 2, 3, 4]', '[5, 6'], True, True)
    """
    # Past MAX_CHARS the completion is spam: the rest is not read, and it counts as cut.
    capped = len(completion) > MAX_CHARS
    completion = completion[:MAX_CHARS]
    # Substring tests first: most completions have no tags, and regexes cost more.
    text = _strip_end_tokens(completion) if "<|" in completion else completion
    tags_ok = True
    m = _THINK.match(text) if "<think>" in text else None
    if m:
        text = text[m.end() :]
    elif think:
        tags_ok = False
    truncated = capped
    m = _ANSWER.search(text) if "<answer>" in text else None
    if m:
        truncated = truncated or not m.group(2)
        tags_ok = tags_ok and not text[: m.start()].strip() and not text[m.end() :].strip()
        text = m.group(1)
    elif think:
        tags_ok = False
    text = text.strip()
    fence = _FENCE_OPEN.search(text) if "```" in text else None
    if fence is None:
        return [text], tags_ok, truncated
    bodies = []
    while fence is not None:  # code fences: keep their insides (str.find: a lazy regex is slower here)
        if len(bodies) == MAX_BLOCKS:  # more blocks than an answer has: spam, not read
            truncated = True
            break
        if fence.group().lstrip(" \t")[3:].lower() in _MARKDOWN_FENCES:
            end = _markdown_end(text, fence.end())
        else:
            end = text.find("```", fence.end())
        if end < 0:
            truncated = True
            end = len(text)
        bodies.append(text[fence.end() : end].strip())
        fence = _FENCE_OPEN.search(text, end + 3)
    return bodies, tags_ok, truncated


def _markdown_end(text: str, start: int) -> int:
    """Where the markdown block opened before ``start`` closes (-1: never), its own code
    blocks nested: one pass over the fence lines.

    >>> page = "```markdown\\n# Run\\n```bash\\nls\\n```\\nDone.\\n```"
    >>> page[11:_markdown_end(page, 11)]
    '\\n# Run\\n```bash\\nls\\n```\\nDone.\\n'
    >>> _markdown_end("```markdown\\n```python\\nx = 1\\n```\\n", 11)
    -1
    """
    depth = 1
    for line in _FENCE_LINE.finditer(text, start):
        depth += 1 if line.group(1) else -1
        if depth == 0:
            return line.start() + line.group().index("```")
    return -1


def bare_count(answer: Answer) -> int | None:
    """The count of an answer that is one non-negative integer and nothing else (``5``,
    ``<answer>5</answer>``), else ``None``; str methods only, linear.

    >>> bare_count(parse_answer("<answer>\\n10\\n</answer>")), bare_count(parse_answer("5 cats"))
    (10, None)
    """
    text = answer.text
    if answer.parsed or not (0 < len(text) <= BARE_COUNT_DIGITS) or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def answer_text(completion: str, think: bool = False) -> tuple[str, bool, bool]:
    """The answer part of a completion, whether its tags are as asked, and whether it was cut.

    >>> answer_text("<think>two cats</think><answer>[1, 2, 3, 4]</answer>", think=True)
    ('[1, 2, 3, 4]', True, False)
    >>> answer_text("<answer>[1, 2", think=False)
    ('[1, 2', True, True)
    >>> answer_text("[1, 2, 3, 4]", think=True)
    ('[1, 2, 3, 4]', False, False)
    """
    bodies, tags_ok, truncated = answer_parts(completion, think)
    return "\n".join(bodies), tags_ok, truncated


def _merge(parts: list[Answer], answer: Answer) -> None:
    """Several fenced blocks are one answer: their items in order, styles must agree."""
    parts = [p for p in parts if p.parsed]
    if not parts:
        return
    answer.style = parts[0].style
    answer.repaired = any(p.repaired or p.style != answer.style for p in parts)
    answer.truncated = any(p.truncated for p in parts)
    answer.n_items = sum(p.n_items for p in parts)
    answer.n_invalid = sum(p.n_invalid for p in parts)
    with_boxes = [p for p in parts if len(p.boxes)]
    if with_boxes:
        answer.boxes = np.concatenate([p.boxes for p in with_boxes])[:MAX_ITEMS]
        answer.labels = [label for p in with_boxes for label in p.labels][:MAX_ITEMS]
    points = [p.points for p in parts if len(p.points)]
    if points:
        answer.points = np.concatenate(points)[:MAX_ITEMS]
    # Past MAX_ITEMS of the blocks together: spam, counted as invalid.
    answer.n_invalid += sum(len(p.boxes) for p in parts) - len(answer.boxes)
    answer.n_invalid += sum(len(p.points) for p in parts) - len(answer.points)


def parse_answer(completion: str, think: bool = False) -> Answer:
    """Parse a completion into boxes, labels and points; never raises.

    >>> a = parse_answer('```json\\n[{"bbox_2d": [10, 20, 30, 40], "label": "cat"}]\\n```')
    >>> a.style, a.boxes.tolist(), a.labels, a.n_invalid
    ('json', [[10.0, 20.0, 30.0, 40.0]], ['cat'], 0)
    >>> a = parse_answer('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6')
    >>> a.boxes.tolist(), a.n_items, a.n_invalid, a.truncated
    ([[1.0, 2.0, 3.0, 4.0]], 2, 1, True)
    >>> a = parse_answer('The cat: {"bbox_2d": [1, 2, 3, 4], "label": "cat",}')
    >>> a.boxes.tolist(), a.labels, a.repaired
    ([[1.0, 2.0, 3.0, 4.0]], ['cat'], True)
    >>> a = parse_answer("<|object_ref_start|>dog<|object_ref_end|><|box_start|>(1,2),(30,40)<|box_end|>")
    >>> a.style, a.boxes.tolist(), a.labels
    ('box_tokens', [[1.0, 2.0, 30.0, 40.0]], ['dog'])
    >>> parse_answer("<not an answer").style
    'none'
    """
    if not isinstance(completion, str):
        return Answer()
    bodies, tags_ok, truncated = answer_parts(completion, think)
    if len(bodies) == 1:
        answer = Answer(text=bodies[0], tags_ok=tags_ok)
        _parse_body(bodies[0], answer)
    else:
        answer = Answer(text="\n".join(bodies), tags_ok=tags_ok)
        parts = [Answer(text=body) for body in bodies]
        for body, part in zip(bodies, parts):
            _parse_body(body, part)
        _merge(parts, answer)
    answer.truncated = answer.truncated or truncated
    return answer


def distinct_boxes(objects: list) -> list:
    """Objects with their first occurrence of each box: a box repeated is one object.

    >>> distinct_boxes([{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [1, 2, 3, 4], "label": "b"}])
    [{'bbox_2d': [1, 2, 3, 4], 'label': 'a'}]
    """
    first = {}
    for obj in objects:
        first.setdefault(tuple(obj["bbox_2d"]), obj)
    return list(first.values())
