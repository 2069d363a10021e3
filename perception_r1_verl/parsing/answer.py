"""What a completion says (``Answer``) and the rules an item must meet to count in it.

Shared by the two readers: the text-level one (``parsing``: answer tags, fences, box tags)
and the object reader (``parsing.objects``: JSON and what only looks like it).
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field

import numpy as np

MAX_ITEMS = 1000  # more objects than any image holds: the rest is spam and is only counted
# Untrusted text meets only patterns without nested or overlapping quantifiers (each
# character is looked at a bounded number of times); the rest is str.find scanning.
_NUM = r"-?\d+(?:\.\d+)?"
_NUMBER = re.compile(_NUM)
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
