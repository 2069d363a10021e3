"""One confidence per parsed box, from the log-probabilities of the tokens that spell it.

``generate --logprobs`` writes, beside each response, every generated token's
log-probability (``logprobs``) and the character offset where it ends (``token_ends``).
A box's tokens are those overlapping its coordinates (first number to fourth) and, when
the item has one, its quoted label; its confidence is the geometric mean of their
probabilities, ``exp(mean log p)``. Why these (measured, docs/evaluation.md): the mean
does not penalise a box for being spelt with more tokens (a product does: ``[100, 200,
...]`` would rank below ``[9, 8, ...]`` for its length alone), and the label decides
the category a COCO detection competes in.

Everything here reads untrusted text: numbers are found by one regex pass, boxes are
matched in output order with a pointer that only moves forward (the first box not found
ends the matching), so the cost is linear in the response's length.
"""

from __future__ import annotations

import math
import re

import numpy as np
import orjson

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_CHUNK = 64  # windows of four numbers compared at once when looking for a box
_LABEL_WINDOW = 200  # characters either side of a box searched for its JSON object's braces


def token_table(extra: dict | None, response: str) -> tuple[np.ndarray, np.ndarray] | str:
    """``(logprobs, token_ends)`` of a response line, or why they cannot be used.

    >>> token_table({"logprobs": [-0.1, -0.2], "token_ends": [1, 3]}, "abc")[1].tolist()
    [1, 3]
    >>> token_table({}, "abc"), token_table({"logprobs": [-0.1], "token_ends": [2]}, "abc")
    ('no log-probabilities', 'log-probabilities do not match the response')
    """
    extra = extra or {}
    if "logprobs_error" in extra:
        return "the tokens did not spell the response"
    logps, ends = extra.get("logprobs"), extra.get("token_ends")
    if logps is None or ends is None:
        return "no log-probabilities"
    try:
        lp = np.asarray(logps, dtype=np.float64)
        end = np.asarray(ends, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        return "log-probabilities do not match the response"
    ok = (
        lp.ndim == 1
        and lp.shape == end.shape
        and (len(end) == 0 or (end[-1] == len(response) and end[0] > 0 and bool(np.all(np.diff(end) > 0))))
        and (len(response) == 0 or len(end) > 0)
        and bool(np.all(np.isfinite(lp)) and np.all(lp <= 0))
    )
    return (lp, end) if ok else "log-probabilities do not match the response"


def coordinate_spans(text: str, boxes) -> list[tuple[int, int] | None]:
    """The character span of each box's four numbers in ``text``, in output order.

    A box is found at the first run of four consecutive numbers equal to its values after
    the previous box (and after a closing ``</think>``); the first box not found ends the
    search (None for it and the rest).

    >>> coordinate_spans('[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6, 7, 8]}]', [[1, 2, 3, 4], [5, 6, 7, 8]])
    [(14, 24), (41, 51)]
    >>> coordinate_spans("<|box_start|>(1,2),(3,4)<|box_end|>", [[1, 2, 3, 4], [9, 9, 9, 9]])
    [(14, 23), None]
    """
    start = text.rfind("</think>") + 1
    numbers = [(m.start(), m.end(), float(m.group())) for m in _NUMBER.finditer(text, start)]
    values = np.array([n[2] for n in numbers], dtype=np.float64)
    windows = np.lib.stride_tricks.sliding_window_view(values, 4) if len(values) >= 4 else values.reshape(0, 4)
    spans: list[tuple[int, int] | None] = []
    at = 0
    for box in boxes:
        want, found = np.asarray(box, dtype=np.float64), None
        # Scan forward a chunk of windows at a time: each window is compared about once.
        while found is None and at < len(windows):
            chunk = windows[at : at + _CHUNK]
            hits = np.flatnonzero(np.all(np.isclose(chunk, want, rtol=0, atol=1e-9), axis=1))
            if len(hits):
                i = at + int(hits[0])
                found, at = (numbers[i][0], numbers[i + 3][1]), i + 4
            else:
                at += _CHUNK
        spans.append(found)
        if found is None:
            break
    return spans + [None] * (len(boxes) - len(spans))


def label_span(text: str, label, span: tuple[int, int]) -> tuple[int, int] | None:
    """The span of ``label``, quoted as JSON, inside the JSON object holding the box at
    ``span`` (its enclosing ``{`` ... ``}``, each looked for within ``_LABEL_WINDOW``
    characters); None outside an object (Qwen2-VL's tokens) or when it is not there.

    >>> text = '[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}, {"label": "dog", "bbox_2d": [5, 6, 7, 8]}]'
    >>> label_span(text, "cat", (14, 24)), label_span(text, "dog", (73, 83)), label_span(text, "cat", (73, 83))
    ((36, 41), (54, 59), None)
    """
    if not isinstance(label, str) or not label:
        return None
    opening = text.rfind("{", max(0, span[0] - _LABEL_WINDOW), span[0])
    closing = text.find("}", span[1], span[1] + _LABEL_WINDOW)
    if opening < 0 or closing < 0 or text.find("}", opening, span[0]) >= 0:
        return None
    quoted = orjson.dumps(label).decode()
    at = text.find(quoted, opening, closing)
    return (at, at + len(quoted)) if at >= 0 else None


def span_logprobs(logprobs: np.ndarray, ends: np.ndarray, spans) -> np.ndarray:
    """The log-probabilities of the tokens overlapping any of ``spans`` (``(start, end)``).

    >>> lp, ends = np.array([-1.0, -2.0, -3.0]), np.array([2, 4, 6])
    >>> span_logprobs(lp, ends, [(3, 5)]).tolist(), span_logprobs(lp, ends, [(2, 4), (5, 6)]).tolist()
    ([-2.0, -3.0], [-2.0, -3.0])
    """
    # Token k covers [ends[k-1], ends[k]): those from the first ending after ``a`` to the
    # one holding character ``b - 1``.
    picks = [logprobs[np.searchsorted(ends, a, "right") : np.searchsorted(ends, b, "left") + 1] for a, b in spans]
    return np.concatenate(picks) if picks else logprobs[:0]


def confidence(logps: np.ndarray, rule: str = "mean") -> float:
    """One probability from token log-probabilities: ``mean`` is their geometric mean,
    ``product`` the probability of the whole sequence.

    >>> round(confidence(np.log([0.5, 0.5])), 6), round(confidence(np.log([0.5, 0.5]), "product"), 6)
    (0.5, 0.25)
    """
    total = float(np.sum(logps)) if rule == "product" else float(np.mean(logps))
    return math.exp(total)


def box_confidences(answer, response: str, extra: dict | None, *, labels: bool = True, rule: str = "mean"):
    """One confidence per box of ``answer`` (its well-formed boxes, in order), or a string
    saying why there is none (then no box of the answer has one: never a partial guess).

    >>> from perception_r1_verl.parsing import parse_answer
    >>> text = '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]'
    >>> extra = {"logprobs": [-0.1, -0.7, -0.1], "token_ends": [13, 26, len(text)]}
    >>> [round(c, 4) for c in box_confidences(parse_answer(text), text, extra)]  # exp(mean(-0.7, -0.1))
    [0.6703]
    """
    table = token_table(extra, response)
    if isinstance(table, str):
        return table
    logps, ends = table
    boxes = answer.boxes.tolist()
    spans = coordinate_spans(response, boxes)
    if any(s is None for s in spans):
        return "a box's numbers were not found in the response"
    names = answer.labels or [None] * len(boxes)
    out = []
    for span, label in zip(spans, names, strict=True):
        found = label_span(response, label, span) if labels else None
        out.append(confidence(span_logprobs(logps, ends, [span] if found is None else [span, found]), rule))
    return out
