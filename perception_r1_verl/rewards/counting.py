"""Object counting (PixMo-Count): the model lists one point or box per object."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..frames import COORD_LIMIT, RELATIVE_SCALE, frame_of
from ..parsing import bare_count, parse_answer
from .format import format_score
from .registry import register
from .render import render_items


@register("counting")
@dataclass(frozen=True)
class CountingReward:
    """The paper's count reward: ``count_weight * ratio * location + format_weight * format``.

    ``ratio = min(P, G) / max(P, G)`` for P predicted and G true objects; ``location =
    1 - mean distance / frame diagonal`` over the Hungarian matching of predicted points
    (box centres for boxes) to the true points. A true count of 0 answered with an empty
    list is correct (ratio and location 1); ground truth without points scores the count
    alone. Range ``[0, count_weight + format_weight]``. ``exact`` (P == G) is logged.

    A bare count (``5``, ``<answer>5</answer>``: the R1-V / EasyR1 CLEVR style) is read as
    P but gave no locations and not the asked format: ``count_weight * ratio *
    bare_count_location`` (``location`` logged 0; ground truth without points: the ratio
    alone), format 0. Its maximum is ``bare_count_location * count_weight`` (0.5 of 2.0).

    >>> gt = CountingReward.prepare({"count": 2, "points": [[10, 10], [50, 50]], "frame": [100, 100]})
    >>> r = CountingReward()('[{"point_2d": [10, 10]}, {"point_2d": [50, 50]}]', gt)
    >>> r["score"], r["count"], r["exact"]
    (2.0, 2.0, 1.0)
    >>> CountingReward()('[{"point_2d": [10, 10]}]', gt)["ratio"]
    0.5
    >>> CountingReward()("[]", CountingReward.prepare({"count": 0, "points": []}))["score"]
    2.0
    >>> r = CountingReward()("<answer>2</answer>", gt)
    >>> r["score"], r["count"], r["exact"], r["location"], r["format"]
    (0.5, 2.0, 1.0, 0.0, 0.0)
    """

    components: ClassVar[tuple] = ("count", "exact", "ratio", "location", "format")
    count_weight: float = 1.0
    format_weight: float = 1.0
    # The share of the count reward a bare count earns where points are scored: the count
    # without the localisation that the points answer is paid for.
    bare_count_location: float = 0.5

    @property
    def max_score(self) -> float:
        return self.count_weight + self.format_weight

    @staticmethod
    def render_answer(gt: dict, model_family: str, think: bool = False) -> str:
        """The exact answer: one point per object, along the frame's diagonal for count-only
        ground truth (any positions score the maximum there: only the count is scored).

        >>> CountingReward.render_answer({"count": 2, "frame": [30, 60]}, "qwen2_5_vl")
        '```json\\n[{"point_2d": [10, 20]}, {"point_2d": [20, 40]}]\\n```'
        """
        points = gt.get("points")
        if not points:
            n = gt["count"]
            w, h = gt.get("frame") or (1000, 1000)
            points = [[round(w * (i + 1) / (n + 1)), round(h * (i + 1) / (n + 1))] for i in range(n)]
        return render_items([{"point_2d": p} for p in points], model_family, think)

    @staticmethod
    def prepare(gt: dict) -> tuple:
        count = int(gt["count"])
        points = np.asarray(gt.get("points") or np.zeros((0, 2)), dtype=np.float64).reshape(-1, 2)
        if count < 0 or (len(points) and len(points) != count):
            raise ValueError(f"counting ground truth has count {count} but {len(points)} points")
        frame = frame_of(gt)
        # Without a frame, distances are normalised as in the paper's 0-1000 frame.
        diagonal = math.hypot(*frame) if frame[0] < COORD_LIMIT else math.hypot(RELATIVE_SCALE, RELATIVE_SCALE)
        points.setflags(write=False)
        return count, points, diagonal, frame

    def __call__(self, completion: str, gt: tuple, think: bool = False, style: str | None = None) -> dict:
        count, gt_points, diagonal, frame = gt
        answer = parse_answer(completion, think)
        fmt = format_score(answer, style)
        points = answer.points
        if len(answer.boxes):
            boxes = np.minimum(np.maximum(answer.boxes, 0), frame * 2)  # clipped first: no overflow
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            points = np.concatenate([points, centres]) if len(points) else centres
        points = np.clip(points, 0, frame)
        n, bare = len(points), bare_count(answer)
        if bare is not None:
            n = bare
            ratio = min(n, count) / max(n, count) if max(n, count) else 1.0
            credit = self.bare_count_location if len(gt_points) else 1.0
            return {
                "score": self.count_weight * ratio * credit,
                "count": float(n),
                "exact": float(n == count),
                "ratio": ratio,
                "location": 0.0,
                "format": 0.0,
            }
        if not answer.parsed:
            ratio = location = 0.0
        else:
            ratio = min(n, count) / max(n, count) if max(n, count) else 1.0
            location = 1.0 if ratio else 0.0
            if n and len(gt_points):
                dist = np.linalg.norm(points[:, None, :] - gt_points[None, :, :], axis=-1)
                rows, cols = linear_sum_assignment(dist)
                location = max(0.0, 1.0 - float(dist[rows, cols].mean()) / diagonal)
        return {
            "score": self.count_weight * ratio * location + self.format_weight * fmt,
            "count": float(n),
            "exact": float(answer.parsed and n == count),
            "ratio": ratio,
            "location": location,
            "format": fmt,
        }
