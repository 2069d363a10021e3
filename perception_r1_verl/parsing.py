"""Parse the answers Qwen-VL models really emit, and render ground truth as such answers.

Accepted answer styles (``Answer.style``):

- ``json``: Qwen2.5-VL / Qwen3-VL objects ``[{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}]``
  (also ``point_2d``), fenced in ```json or bare, a single object, or a bare list of
  boxes;
- ``box_tokens``: Qwen2-VL ``<|object_ref_start|>cat<|object_ref_end|><|box_start|>(x1,y1),
  (x2,y2)<|box_end|>``;
- ``plain``: ``[x1, y1, x2, y2]`` or ``(x1,y1),(x2,y2)`` inside other text (the latter is
  what Qwen2-VL box tokens become when a decoder drops special tokens).

Any of them may sit inside ``<answer>...</answer>`` and, when the prompt asks for
thinking, after a ``<think>...</think>`` block. A completion cut off at the length limit
keeps its complete objects and is marked ``truncated``. Parsing never raises.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import orjson

MAX_ITEMS = 1000  # more objects than any image holds: the rest is spam and is only counted
_NUM = r"-?\d+(?:\.\d+)?"
_THINK = re.compile(r"\s*<think>.*?</think>\s*", re.S)
_ANSWER = re.compile(r"<answer>(.*?)(</answer>|$)", re.S)
_FENCE_OPEN = re.compile(r"```[a-zA-Z]*")
_BOX_TOKEN = re.compile(
    r"(?:<\|object_ref_start\|>(.*?)<\|object_ref_end\|>\s*)?"
    rf"<\|box_start\|>\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*<\|box_end\|>",
    re.S,
)
_PLAIN_BOX = re.compile(
    rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]"
    rf"|\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)"
)
_FLAT_OBJECT = re.compile(r"\{[^{}]*\}")
_EMPTY_BOXES = np.zeros((0, 4))
_EMPTY_POINTS = np.zeros((0, 2))


@dataclass(slots=True)
class Answer:
    """What a completion says, in the model's answer frame.

    ``boxes`` holds the well-formed boxes (x1 <= x2, y1 <= y2, finite) with their
    ``labels`` (``None`` where the item had none); ``points`` the ``point_2d`` items.
    ``n_items`` counts every object the model emitted, ``n_invalid`` those that were
    malformed (wrong arity, non-numbers, inverted boxes, non-finite values).
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

    @property
    def parsed(self) -> bool:
        """Whether the completion holds an answer in any recognised style (``[]`` counts)."""
        return self.style != "none"


def _number(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _box(v):
    """A well-formed ``[x1, y1, x2, y2]`` as floats, else None."""
    if type(v) is list and len(v) == 4 and all(map(_number, v)) and v[0] <= v[2] and v[1] <= v[3]:
        return v
    return None


class _Collector:
    """Accumulates items into an Answer; one place for the validity rules."""

    __slots__ = ("boxes", "labels", "points", "n_items", "n_invalid")

    def __init__(self):
        self.boxes, self.labels, self.points = [], [], []
        self.n_items = self.n_invalid = 0

    def add_box(self, box, label=None):
        self.n_items += 1
        if self.n_items > MAX_ITEMS:
            return  # counted as invalid in into()
        box = _box(box)
        if box is None:
            self.n_invalid += 1
        else:
            self.boxes.append(box)
            self.labels.append(label)

    def add_object(self, obj):
        if type(obj) is dict:
            label = obj.get("label")
            label = label if type(label) is str else None
            if "bbox_2d" in obj:
                self.add_box(obj["bbox_2d"], label)
                return
            point = obj.get("point_2d")
            self.n_items += 1
            if type(point) is list and len(point) == 2 and all(map(_number, point)):
                if self.n_items <= MAX_ITEMS:
                    self.points.append(point)
                return
            self.n_invalid += self.n_items <= MAX_ITEMS
        elif type(obj) is list and len(obj) == 4:
            self.add_box(obj)
        else:
            self.n_items += 1
            self.n_invalid += self.n_items <= MAX_ITEMS

    def into(self, answer: Answer) -> Answer:
        # Items past MAX_ITEMS are spam: counted as emitted and as invalid.
        answer.n_items = self.n_items
        answer.n_invalid = self.n_invalid + max(0, self.n_items - MAX_ITEMS)
        if self.boxes:
            answer.boxes = np.array(self.boxes, dtype=np.float64)
            answer.labels = self.labels
        if self.points:
            answer.points = np.array(self.points, dtype=np.float64)
        return answer


def _parse_json(body: str, answer: Answer) -> bool:
    """Fill ``answer`` from JSON text; False when the text is not JSON at all."""
    col = _Collector()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        if "{" not in body:
            return False  # not JSON objects: maybe plain lists such as "[1, 2, 3, 4] [5, 6, 7, 8]"
        # Malformed or cut off: keep every complete flat object, count the rest.
        for m in _FLAT_OBJECT.finditer(body):
            try:
                col.add_object(orjson.loads(m.group()))
            except orjson.JSONDecodeError:
                col.add_object(None)
        tail = body[body.rfind("}") + 1 :]
        if "{" in tail:
            col.add_object(None)  # the object the length limit cut in half
        answer.truncated = not body.rstrip().endswith(("]", "}"))
        col.into(answer)
        answer.style = "json"
        return True
    if type(data) is list and len(data) == 4 and all(map(_number, data)):
        col.add_box(data)
    elif type(data) is list and _fast_boxes(data, body, answer):
        return True
    elif type(data) is list:
        for obj in data:
            col.add_object(obj)
    elif type(data) is dict:
        col.add_object(data)
    else:
        return False
    col.into(answer)
    answer.style = "json"
    return True


def _fast_boxes(data: list, body: str, answer: Answer) -> bool:
    """The common case, vectorised: a list of ``{"bbox_2d": [4 numbers], "label": str}``.

    Returns False (leaving the item-by-item path to decide) on anything else. JSON
    booleans and nulls would pass numpy's conversion, so their presence forces that path.
    """
    if not data or len(data) > MAX_ITEMS or "true" in body or "false" in body or "null" in body:
        return False
    try:
        coords = [obj["bbox_2d"] for obj in data]
        boxes = np.array(coords)
    except (TypeError, KeyError, ValueError):  # not dicts, no bbox_2d, ragged lists
        return False
    if boxes.dtype.kind not in "if" or boxes.shape != (len(data), 4):
        return False
    boxes = boxes.astype(np.float64)
    good = np.isfinite(boxes).all(1) & (boxes[:, 0] <= boxes[:, 2]) & (boxes[:, 1] <= boxes[:, 3])
    labels = [obj.get("label") for obj in data]
    labels = [label if type(label) is str else None for label in labels]
    answer.n_items = len(data)
    answer.n_invalid = len(data) - int(good.sum())
    if answer.n_invalid:
        boxes = boxes[good]
        labels = [label for label, ok in zip(labels, good.tolist()) if ok]
    answer.boxes, answer.labels, answer.style = boxes, labels, "json"
    return True


def _parse_box_tokens(body: str, answer: Answer) -> None:
    col = _Collector()
    n_starts = body.count("<|box_start|>")
    for m in _BOX_TOKEN.finditer(body):
        label, *xy = m.groups()
        col.add_box([float(v) for v in xy], label.strip() if label is not None else None)
    # Box starts that did not form a complete box are malformed or cut off.
    broken = n_starts - col.n_items
    col.n_items += broken
    col.n_invalid += broken
    answer.truncated = body.rfind("<|box_start|>") > body.rfind("<|box_end|>")
    answer.style = "box_tokens"
    col.into(answer)


def _parse_plain(body: str, answer: Answer) -> None:
    col = _Collector()
    for m in _PLAIN_BOX.finditer(body):
        g = m.groups()
        col.add_box([float(v) for v in (g[:4] if g[0] is not None else g[4:])])
    if col.n_items:
        answer.style = "plain"
        col.into(answer)


def answer_text(completion: str, think: bool = False) -> tuple[str, bool, bool]:
    """The answer part of a completion, whether its tags are as asked, and whether it was cut.

    >>> answer_text("<think>two cats</think><answer>[1, 2, 3, 4]</answer>", think=True)
    ('[1, 2, 3, 4]', True, False)
    >>> answer_text("<answer>[1, 2", think=False)
    ('[1, 2', True, True)
    >>> answer_text("[1, 2, 3, 4]", think=True)
    ('[1, 2, 3, 4]', False, False)
    """
    # Substring tests first: most completions have no tags, and regexes cost more.
    text = completion
    tags_ok = True
    m = _THINK.match(text) if "<think>" in text else None
    if m:
        text = text[m.end() :]
    elif think:
        tags_ok = False
    truncated = False
    m = _ANSWER.search(text) if "<answer>" in text else None
    if m:
        truncated = not m.group(2)
        tags_ok = tags_ok and not text[: m.start()].strip() and not text[m.end() :].strip()
        text = m.group(1)
    elif think:
        tags_ok = False
    text = text.strip()
    start = text.find("```")
    if start >= 0:  # a code fence: keep its inside (str.find: a lazy regex is slower here)
        start = _FENCE_OPEN.match(text, start).end()
        end = text.find("```", start)
        truncated = truncated or end < 0
        text = text[start:end if end >= 0 else len(text)].strip()
    return text, tags_ok, truncated


def parse_answer(completion: str, think: bool = False) -> Answer:
    """Parse a completion into boxes, labels and points; never raises.

    >>> a = parse_answer('```json\\n[{"bbox_2d": [10, 20, 30, 40], "label": "cat"}]\\n```')
    >>> a.style, a.boxes.tolist(), a.labels, a.n_invalid
    ('json', [[10.0, 20.0, 30.0, 40.0]], ['cat'], 0)
    >>> a = parse_answer('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6')
    >>> a.boxes.tolist(), a.n_items, a.n_invalid, a.truncated
    ([[1.0, 2.0, 3.0, 4.0]], 2, 1, True)
    >>> a = parse_answer("<|object_ref_start|>dog<|object_ref_end|><|box_start|>(1,2),(30,40)<|box_end|>")
    >>> a.style, a.boxes.tolist(), a.labels
    ('box_tokens', [[1.0, 2.0, 30.0, 40.0]], ['dog'])
    >>> parse_answer("<not an answer").style
    'none'
    """
    if not isinstance(completion, str):
        return Answer()
    text, tags_ok, truncated = answer_text(completion, think)
    answer = Answer(text=text, tags_ok=tags_ok)
    if "<|box_start|>" in text:
        _parse_box_tokens(text, answer)
    elif not (text.startswith(("[", "{")) and _parse_json(text, answer)):
        _parse_plain(text, answer)
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


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def render_answer(task: str, ground_truth: dict, model_family: str, think: bool = False) -> str:
    """The exact answer a perfect model gives for ``ground_truth`` (a parsed contract dict).

    Qwen2-VL answers with box tokens, Qwen2.5-VL and Qwen3-VL with JSON; "no objects" is
    ``[]`` in every family; counting answers with points (box tokens: degenerate boxes),
    placed along the diagonal when the ground truth has a count but no points.

    >>> render_answer("grounding", {"bbox_2d": [1, 2, 3, 4]}, "qwen2_5_vl")
    '```json\\n[{"bbox_2d": [1, 2, 3, 4]}]\\n```'
    >>> render_answer("detection", {"objects": [{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]}, "qwen2_vl")
    '<|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>'
    >>> render_answer("ocr", {"text": "Hello"}, "qwen2_vl", think=True)
    '<think>\\n</think>\\n<answer>Hello</answer>'
    """
    if task == "ocr":
        body = ground_truth["text"]
    else:
        if task == "grounding":
            items = [{"bbox_2d": ground_truth["bbox_2d"]}]
        elif task == "detection":
            items = distinct_boxes(ground_truth["objects"])
        elif task == "counting":
            items = [{"point_2d": p} for p in ground_truth.get("points") or _diagonal(ground_truth)]
        else:
            raise ValueError(f"unknown task {task!r}")
        if model_family == "qwen2_vl" and items:  # box tokens have no empty list: "[]" is the answer
            body = "".join(_render_box_token(item) for item in items)
        else:
            rows = ", ".join(_render_json_item(item) for item in items)
            body = f"```json\n[{rows}]\n```"
    return f"<think>\n</think>\n<answer>{body}</answer>" if think else body


def _diagonal(ground_truth: dict) -> list:
    """``count`` points along the frame's diagonal, for count-only ground truth (any
    positions score the maximum there: without true points only the count is scored)."""
    n = ground_truth["count"]
    w, h = ground_truth.get("frame") or (1000, 1000)
    return [[round(w * (i + 1) / (n + 1)), round(h * (i + 1) / (n + 1))] for i in range(n)]


def _render_json_item(item: dict) -> str:
    key = "bbox_2d" if "bbox_2d" in item else "point_2d"
    coords = ", ".join(_fmt(v) for v in item[key])
    label = f', "label": {orjson.dumps(item["label"]).decode()}' if item.get("label") is not None else ""
    return f'{{"{key}": [{coords}]{label}}}'


def _render_box_token(item: dict) -> str:
    if "bbox_2d" in item:
        x1, y1, x2, y2 = (_fmt(v) for v in item["bbox_2d"])
    else:  # a point as a degenerate box: Qwen2-VL has no point syntax
        x1, y1 = (_fmt(v) for v in item["point_2d"])
        x2, y2 = x1, y1
    ref = f"<|object_ref_start|>{item['label']}<|object_ref_end|>" if item.get("label") is not None else ""
    return f"{ref}<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
