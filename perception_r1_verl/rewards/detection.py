"""Object detection (COCO): the paper's multi-subject reward with Hungarian matching."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat
from typing import ClassVar, NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..boxes import EPS, to_cxcywh
from ..frames import COORD_LIMIT, RELATIVE_SCALE, frame_of
from ..labels import normalise_label
from ..parsing import distinct_boxes, parse_answer
from .format import format_score
from .registry import register
from .render import render_items


class DetectionTruth(NamedTuple):
    boxes: np.ndarray  # (M, 4) in the answer frame, clipped
    label_ids: np.ndarray  # (M,) index into ``names``
    names: dict  # normalised label -> id; covers ``categories`` and every ground-truth label
    bounds: np.ndarray  # (W, H, W, H) of the frame, to clip predictions
    areas: np.ndarray  # (M,) box areas
    to_l1: np.ndarray  # (4, 4): xyxy @ to_l1 is centre-size in the normalised frame of the L1 cost
    cxcywh: np.ndarray  # (M, 4) the boxes so


def geometry(boxes: np.ndarray, truth: DetectionTruth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU, generalised IoU and L1 distance (normalised centre-size) of ``boxes`` against
    the truth's, shape ``(N, M)`` each: the matching cost's parts, with the truth's side
    computed once per prompt in :meth:`DetectionReward.prepare`.

    >>> truth = DetectionReward.prepare({"objects": [{"bbox_2d": [0, 0, 10, 10], "label": "a"}], "frame": [100, 100]})
    >>> [m.round(3).tolist() for m in geometry(np.array([[0., 0, 10, 10], [20, 0, 30, 10]]), truth)]
    [[[1.0], [0.0]], [[1.0], [-0.333]], [[0.0], [0.2]]]
    """
    pred, true = boxes[:, None, :], truth.boxes[None, :, :]
    hi, lo = np.maximum(pred, true), np.minimum(pred, true)  # both corners at once
    overlap = np.maximum(lo[..., 2:] - hi[..., :2], 0)
    inter = overlap[..., 0] * overlap[..., 1]
    hull_wh = hi[..., 2:] - lo[..., :2]
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    union = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None] + truth.areas - inter
    iou = inter / np.maximum(union, EPS)
    giou = iou - (hull - union) / np.maximum(hull, EPS)
    l1 = np.abs((boxes @ truth.to_l1)[:, None, :] - truth.cxcywh[None, :, :]) @ _ONES  # matmul: faster than sum(-1)
    return iou, giou, l1


_ONES = np.ones(4)


@register("detection")
@dataclass(frozen=True)
class DetectionReward:
    """The paper's detection reward, with the released code's defects fixed.

    Predictions are clipped to the frame and matched one-to-one to the ground truth by
    ``scipy.optimize.linear_sum_assignment`` on the DETR cost ``l1_cost * L1(cxcywh) -
    label_cost * [labels agree] - giou_cost * GIoU``; matched pairs count only at
    ``IoU >= match_iou``. With P emitted items, G true objects and K kept matches::

        score = format_weight * format + f1_weight * F1(K/P, K/G)
              + label_weight * label accuracy over matches + iou_weight * mean matched IoU
              - missing_weight * (FP / P + FN / G)

    Range ``[-2 * missing_weight, format_weight + f1_weight + label_weight + iou_weight]``
    (default ``[-1, 3]``); the exact ground truth scores the maximum, also for an image
    without objects answered with ``[]``. Rules:

    - every emitted item is a prediction (P), so malformed items, inverted boxes
      (``x2 < x1``, ``y2 < y1``: never repaired) and ``point_2d`` items lower precision
      and format without zeroing the rest;
    - a box repeated with the same coordinates (after clipping) is matched once, with the
      label of its first occurrence; the repeats are false positives, so repeating a box
      never raises the score (a box repeated in the ground truth is likewise one object);
    - labels compare by :func:`perception_r1_verl.labels.normalise_label`, as in the
      COCO evaluation; a label outside the prompt's ``categories`` (or missing) can still match a box for
      localisation but is never label-correct; ``unknown_labels`` logs their share;
    - an unparsable completion scores 0 on every accuracy component.

    ``missing_weight`` 0.5 is the paper's best ablation (Table 6); the released script ran
    with 0.

    >>> gt = DetectionReward.prepare({"objects": [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}], "frame": [100, 100]})
    >>> DetectionReward()('[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]', gt)["score"]
    3.0
    >>> r = DetectionReward()('[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}, {"bbox_2d": [50, 50, 60, 60], "label": "cat"}]', gt)
    >>> r["precision"], r["recall"], r["label_accuracy"], r["score"]
    (0.5, 1.0, 0.0, 1.5)
    """

    components: ClassVar[tuple] = (
        "format", "precision", "recall", "f1", "label_accuracy", "mean_iou", "missing_penalty", "unknown_labels", "num_pred",
    )  # fmt: skip
    format_weight: float = 0.25
    f1_weight: float = 0.75
    label_weight: float = 1.0
    iou_weight: float = 1.0
    missing_weight: float = 0.5
    match_iou: float = 0.5
    l1_cost: float = 5.0
    giou_cost: float = 2.0
    label_cost: float = 1.0

    @property
    def max_score(self) -> float:
        return self.format_weight + self.f1_weight + self.label_weight + self.iou_weight

    @staticmethod
    def render_answer(gt: dict, model_family: str, think: bool = False) -> str:
        """The exact answer: every distinct box with its label; ``[]`` for no objects.

        >>> DetectionReward.render_answer({"objects": []}, "qwen2_vl")
        '```json\\n[]\\n```'
        """
        return render_items(distinct_boxes(gt["objects"]), model_family, think)

    @staticmethod
    def prepare(gt: dict) -> DetectionTruth:
        objects = distinct_boxes(gt["objects"])
        names = {normalise_label(c): i for i, c in enumerate(gt.get("categories") or [])}
        boxes, label_ids = [], []
        for obj in objects:
            label = normalise_label(obj.get("label"))
            box = [float(v) for v in obj["bbox_2d"]]
            if len(box) != 4 or box[0] > box[2] or box[1] > box[3]:
                raise ValueError(f"detection ground truth box must be [x1, y1, x2, y2], got {obj['bbox_2d']!r}")
            boxes.append(box)
            label_ids.append(names.setdefault(label, len(names)))
        bounds = np.array(frame_of(gt) * 2, dtype=np.float64)
        boxes = np.clip(np.array(boxes, dtype=np.float64).reshape(-1, 4), 0, bounds)
        # The L1 cost lives in the normalised frame; without a frame, in the paper's 0-1000 one.
        scale = bounds if bounds[0] < COORD_LIMIT else np.full(4, float(RELATIVE_SCALE))
        to_l1 = to_cxcywh(np.diag(1 / scale))
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        truth = DetectionTruth(boxes, np.array(label_ids, dtype=np.int64), names, bounds, areas, to_l1, boxes @ to_l1)
        for array in (truth.boxes, truth.label_ids, truth.bounds, truth.areas, truth.to_l1, truth.cxcywh):
            array.setflags(write=False)  # shared by every rollout of the prompt
        return truth

    def __call__(self, completion: str, gt: DetectionTruth, think: bool = False, style: str | None = None) -> dict:
        answer = parse_answer(completion, think)
        fmt = format_score(answer, style, n_bad=len(answer.points))
        n_pred, n_gt = answer.n_items, len(gt.boxes)
        matched, label_acc, mean_iou, unknown = 0, 0.0, 0.0, 0.0
        boxes = answer.boxes
        if len(boxes):
            boxes = np.minimum(np.maximum(boxes, 0), gt.bounds)  # np.clip: same, slower
            labels = answer.labels
            keys = list(map(tuple, boxes.tolist()))
            if len(set(keys)) < len(keys):  # repeats: each box once, with its first label
                first = {}
                for i, key in enumerate(keys):
                    first.setdefault(key, i)
                keep = list(first.values())
                boxes, labels = boxes[keep], [labels[i] for i in keep]
            names = gt.names
            ids = list(map(names.get, labels, repeat(-1)))  # the exact text first: fast
            if -1 in ids:
                ids = [i if i >= 0 else names.get(normalise_label(label), -1) for i, label in zip(ids, labels)]
            unknown = ids.count(-1) / len(ids)
            if n_gt:
                ious, gious, l1 = geometry(boxes, gt)
                agree = np.array(ids)[:, None] == gt.label_ids[None, :]
                rows, cols = linear_sum_assignment(self.l1_cost * l1 - self.label_cost * agree - self.giou_cost * gious)
                # At most min(N, M) pairs: plain Python beats numpy's per-call cost here.
                kept = [
                    (v, a) for v, a in zip(ious[rows, cols].tolist(), agree[rows, cols].tolist()) if v >= self.match_iou
                ]
                matched = len(kept)
                if matched:
                    label_acc = sum(a for _, a in kept) / matched
                    mean_iou = sum(v for v, _ in kept) / matched
        if not answer.parsed:
            precision = recall = 0.0
        else:
            precision = matched / n_pred if n_pred else float(n_gt == 0)
            recall = matched / n_gt if n_gt else float(n_pred == 0)
            if n_pred == n_gt == 0:
                label_acc = mean_iou = 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        missing = (n_pred - matched) / n_pred if n_pred else 0.0
        missing += (n_gt - matched) / n_gt if n_gt else 0.0
        score = (
            self.format_weight * fmt
            + self.f1_weight * f1
            + self.label_weight * label_acc
            + self.iou_weight * mean_iou
            - self.missing_weight * missing
        )
        return {
            "score": score,
            "format": fmt,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "label_accuracy": label_acc,
            "mean_iou": mean_iou,
            "missing_penalty": missing,
            "unknown_labels": unknown,
            "num_pred": float(n_pred),
        }
