"""Counting metrics (PixMo-Count val / test).

The predicted count is the number of well-formed objects in the answer: boxes plus
points, whichever the model listed (malformed items do not count, so a broken answer can
never be right by its length alone); an answer that is one integer alone (``5``,
``<answer>5</answer>``) is that count. ``Acc`` is exact-match accuracy, as in the paper;
``MAE`` is the mean absolute count error.
"""

from __future__ import annotations

import numpy as np

from ..parsing import Answer, bare_count
from .drawing import GT_COLOR, draw_points
from .frame_check import counting_fit
from .metric import BoxMetric
from .registry import register


def sample_counting(answer: Answer, gt: dict) -> dict:
    """Per-sample record; ``score`` (minus the absolute error) ranks samples in the report.

    >>> from perception_r1_verl.parsing import parse_answer
    >>> sample_counting(parse_answer('[{"point_2d": [1, 2]}, {"point_2d": [5, 6]}]'), {"count": 2})
    {'score': 0, 'pred_count': 2, 'gt_count': 2, 'correct': True}
    >>> sample_counting(parse_answer("<answer>5</answer>"), {"count": 5})["pred_count"]
    5
    """
    bare = bare_count(answer)
    pred = len(answer.boxes) + len(answer.points) if bare is None else bare
    target = int(gt["count"])
    return {"score": -abs(pred - target), "pred_count": pred, "gt_count": target, "correct": pred == target}


def summarize_counting(records: list[dict]) -> dict:
    """Exact-match ``Acc`` and ``MAE``.

    >>> summarize_counting([{"pred_count": 3, "gt_count": 3}, {"pred_count": 1, "gt_count": 4}])
    {'Acc': 0.5, 'MAE': 1.5}
    """
    pred = np.array([r["pred_count"] for r in records])
    target = np.array([r["gt_count"] for r in records])
    return {"Acc": float(np.mean(pred == target)), "MAE": float(np.mean(np.abs(pred - target)))}


@register("counting")
class CountingMetric(BoxMetric):
    case_fields = ("pred_count", "gt_count")

    sample = staticmethod(sample_counting)
    summarize = staticmethod(summarize_counting)
    frame_fit = staticmethod(counting_fit)

    def n_truth(self, gt):
        return int(gt.get("count", len(gt.get("points") or [])))

    def draw_truth(self, draw, gt, to_image, width):
        draw_points(draw, [to_image(p) for p in gt.get("points") or []], GT_COLOR, 2 * width)
