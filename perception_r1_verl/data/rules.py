"""The converters' bad-input rules, counted by :class:`Stats` (fatal under ``--strict``)."""

from __future__ import annotations

from collections import Counter, defaultdict

# rule name -> what happens. "skip" drops the row, "drop" drops one object of the row,
# "repair" fixes the value; all of them are bad input, counted, and fatal under --strict.
RULES = {
    "malformed_record": "skip: a record lacks a required field or has one of the wrong type",
    "duplicate_id": "skip: a later record repeats an id already converted (the first one wins)",
    "missing_image": "skip: the image file does not exist",
    "image_outside_root": "skip: the image path is absolute or its '..' parts climb out of the image folder",
    "corrupt_image": "skip: the image file cannot be decoded completely",
    "unsupported_image_mode": "skip: 32-bit integer or float pixels have no 8-bit range the model's loader could show",
    "bad_aspect_ratio": "skip: the image is more than 200 times wider than high (or v.v.); the processor refuses it",
    "size_mismatch": "skip: the decoded image size differs from the size in the annotations (EXIF rotation or wrong file)",
    "empty_text": "skip: the expression, label or transcript is empty",
    "no_objects": "skip: a detection image has no object left (use --keep-empty to keep it as a negative)",
    "unknown_category": "drop: the object's category id is not in the category table",
    "unknown_image": "drop: the annotation's image id is not in the image table",
    "box_zero_area": "drop (skip the row for grounding): the box has zero or negative width or height",
    "box_outside_image": "repair: the box is clipped to the image",
    "box_below_resolution": "drop (skip the row for grounding): the box has zero area once rounded in the answer frame",
    "point_outside_image": "repair: the point is clipped to the image",
    "count_mismatch": "repair: count differs from the number of points; the points are the ground truth",
}
# Counted for the record, never errors: documented choices, not bad input.
NOTES = {
    "crowd_ignored": "COCO crowd regions (iscrowd=1) are not detection targets",
    "empty_image_kept": "detection image without objects kept as a negative (--keep-empty)",
    "image_converted": "stored as 8-bit RGB PNG: verl's loader would clip 16-bit grey to white or drop transparency",
    "count_without_points": "counting row with a count but no points (PixMo eval splits): count-only ground truth",
}
_EXAMPLES = 5


class DataError(ValueError):
    """Bad input under ``--strict`` (names the record), or an unusable input file."""


class CellError(ValueError):
    """A table cell that cannot give one image (it holds several)."""


class OutsideRootError(ValueError):
    """An image path that leaves the image folder (see ``tables.under_root``)."""


class Stats:
    """Counts every rule hit, keeps a few examples, and raises under ``strict``."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)

    def hit(self, rule: str, record: str, n: int = 1) -> None:
        if rule not in RULES and rule not in NOTES:
            raise KeyError(rule)
        if self.strict and rule in RULES:
            raise DataError(f"{rule} at {record} ({RULES[rule]})")
        self.counts[rule] += n
        if len(self.examples[rule]) < _EXAMPLES:
            self.examples[rule].append(record)

    def as_dict(self) -> dict:
        return {
            rule: {"count": self.counts[rule], "rule": (RULES | NOTES)[rule], "examples": self.examples[rule]}
            for rule in sorted(self.counts)
        }
