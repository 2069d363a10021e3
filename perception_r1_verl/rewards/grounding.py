"""Visual grounding (RefCOCO/+/g): one box for one referring expression."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..boxes import iou
from ..frames import clip_box, frame_of
from ..parsing import parse_answer
from .format import format_score
from .registry import register
from .render import render_items

IOU_SHAPES = ("iou", "iou_squared", "iou_at_0.5")


@register("grounding")
@dataclass(frozen=True)
class GroundingReward:
    """``iou_weight * shape(IoU) + format_weight * format``, in ``[0, iou_weight + format_weight]``.

    The first well-formed box is scored, clipped to the frame; format requires exactly one.
    ``iou_shape``: ``iou`` (the paper), ``iou_squared`` (the released code) or
    ``iou_at_0.5`` (1 when IoU >= 0.5).

    >>> gt = GroundingReward.prepare({"bbox_2d": [0, 0, 10, 10], "frame": [100, 100]})
    >>> r = GroundingReward()('[{"bbox_2d": [0, 0, 10, 5]}]', gt)
    >>> r["score"], r["iou"], r["format"]
    (1.5, 0.5, 1.0)
    >>> GroundingReward(iou_shape="iou_squared")('[0, 0, 10, 5]', gt)["score"]
    1.25
    >>> GroundingReward()("<|box_start|>(5,5)<|box_end|>", gt)["format"]  # a point, not a box
    0.0
    """

    components: ClassVar[tuple] = ("iou", "acc@0.5", "format")
    iou_shape: str = "iou"
    iou_weight: float = 1.0
    format_weight: float = 1.0

    def __post_init__(self):
        if self.iou_shape not in IOU_SHAPES:
            raise ValueError(f"iou_shape must be one of {IOU_SHAPES}, got {self.iou_shape!r}")

    @property
    def max_score(self) -> float:
        return self.iou_weight + self.format_weight

    @staticmethod
    def render_answer(gt: dict, model_family: str, think: bool = False) -> str:
        """The exact answer: the one box.

        >>> GroundingReward.render_answer({"bbox_2d": [1, 2, 3, 4]}, "qwen2_vl")
        '<|box_start|>(1,2),(3,4)<|box_end|>'
        """
        return render_items([{"bbox_2d": gt["bbox_2d"]}], model_family, think)

    @staticmethod
    def prepare(gt: dict) -> tuple:
        box = [float(v) for v in gt["bbox_2d"]]
        if len(box) != 4:
            raise ValueError(f"grounding bbox_2d needs 4 numbers, got {gt['bbox_2d']!r}")
        frame = frame_of(gt)
        return clip_box(box, frame), frame

    def __call__(self, completion: str, gt: tuple, think: bool = False, style: str | None = None) -> dict:
        gt_box, frame = gt
        answer = parse_answer(completion, think)
        # A point is no box: without this, "(555,5555)" alone earned the whole format reward,
        # and the miniature's GRPO learned to write nothing else (tests/e2e/miniature.py).
        fmt = format_score(answer, style, single=True, n_bad=len(answer.points))
        value = 0.0
        if len(answer.boxes):
            box = answer.boxes[0].tolist()
            value = iou(clip_box(box, frame), gt_box)
        if self.iou_shape == "iou_squared":
            shaped = value * value
        elif self.iou_shape == "iou_at_0.5":
            shaped = float(value >= 0.5)
        else:
            shaped = value
        return {
            "score": self.iou_weight * shaped + self.format_weight * fmt,
            "iou": value,
            "acc@0.5": float(value >= 0.5),
            "format": fmt,
        }
