"""Referring-expression grounding metrics (RefCOCO / RefCOCO+ / RefCOCOg).

The first well-formed box of the answer is the prediction (the prompt asks for one), clipped
to the answer frame, and compared with the ground truth in that same frame (IoU is
unchanged by the per-axis scaling back to original pixels). ``Acc@t`` counts IoU >= t, as
the released evaluation does; ``CenterAcc`` counts predictions whose centre lies inside
the ground-truth box. An answer with no box scores IoU 0 and misses the centre.
"""

from __future__ import annotations

import numpy as np

from ..boxes import iou
from ..frames import clip_box
from ..parsing import Answer
from .drawing import GT_COLOR, PRED_COLOR, draw_boxes
from .frame_check import grounding_fit
from .metric import BoxMetric
from .registry import register

THRESHOLDS = (0.5, 0.75, 0.95)


def sample_grounding(answer: Answer, gt: dict) -> dict:
    """Per-sample record; ``score`` (the IoU) ranks samples in the report.

    >>> from perception_r1_verl.parsing import parse_answer
    >>> r = sample_grounding(parse_answer("[0, 0, 10, 40]"), {"bbox_2d": [0, 0, 10, 10], "frame": [100, 100]})
    >>> r["iou"], r["center_hit"]
    (0.25, False)
    """
    if not len(answer.boxes):
        return {"score": 0.0, "iou": 0.0, "center_hit": False, "pred_box": None}
    box = answer.boxes[0].tolist()
    if "frame" in gt:
        box = clip_box(box, gt["frame"])
    g = gt["bbox_2d"]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    value = iou(box, g)
    hit = g[0] <= cx <= g[2] and g[1] <= cy <= g[3]
    return {"score": value, "iou": value, "center_hit": bool(hit), "pred_box": box}


def summarize_grounding(records: list[dict], thresholds=THRESHOLDS) -> dict:
    """``Acc@t`` for each threshold, ``mIoU`` and ``CenterAcc`` (fractions in [0, 1]).

    >>> summarize_grounding([{"iou": 0.8, "center_hit": True}, {"iou": 0.5, "center_hit": False}])
    {'Acc@0.5': 1.0, 'Acc@0.75': 0.5, 'Acc@0.95': 0.0, 'mIoU': 0.65, 'CenterAcc': 0.5}
    """
    ious = np.array([r["iou"] for r in records], dtype=np.float64)
    out = {f"Acc@{t:g}": float(np.mean(ious >= t)) for t in thresholds}
    out["mIoU"] = float(ious.mean())
    out["CenterAcc"] = float(np.mean([r["center_hit"] for r in records]))
    return out


@register("grounding")
class GroundingMetric(BoxMetric):
    case_fields = ("iou", "center_hit")

    sample = staticmethod(sample_grounding)
    summarize = staticmethod(summarize_grounding)
    frame_fit = staticmethod(grounding_fit)

    def n_truth(self, gt):
        return 1

    def draw_truth(self, draw, gt, to_image, width):
        draw_boxes(draw, [to_image(gt["bbox_2d"])], GT_COLOR, width)

    def draw_prediction(self, draw, sample, record, response, to_image, width):
        if record.get("pred_box"):  # the scored box: the first well-formed one, clipped
            draw_boxes(draw, [to_image(record["pred_box"])], PRED_COLOR, width)
