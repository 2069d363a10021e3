"""Box geometry shared by rewards and evaluation. Boxes are ``[x1, y1, x2, y2]``.

An epsilon guards every division, so degenerate (zero-area) boxes give IoU 0, never NaN.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-9
# xyxy @ _TO_CXCYWH = (cx, cy, w, h)
_TO_CXCYWH = np.array([[0.5, 0, -1, 0], [0, 0.5, 0, -1], [0.5, 0, 1, 0], [0, 0.5, 0, 1]])


def iou(a, b) -> float:
    """IoU of two boxes, in plain Python (faster than numpy for a single pair).

    >>> iou([0, 0, 10, 10], [5, 0, 15, 10])
    0.3333333333333333
    >>> iou([0, 0, 0, 0], [0, 0, 0, 0])
    0.0
    """
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, EPS)


def pairwise_iou_giou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and generalised IoU matrices, shape ``(len(a), len(b))``.

    >>> i, g = pairwise_iou_giou(np.array([[0., 0, 10, 10]]), np.array([[0., 0, 10, 10], [20, 0, 30, 10]]))
    >>> i.round(3).tolist(), g.round(3).tolist()
    ([[1.0, 0.0]], [[1.0, -0.333]])
    """
    # Column views broadcast (N, 1) against (M,): cheaper than slicing (N, M, 2) arrays.
    ax1, ay1, ax2, ay2 = (a[:, i : i + 1] for i in range(4))
    bx1, by1, bx2, by2 = b.T
    inter = np.maximum(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0) * np.maximum(
        np.minimum(ay2, by2) - np.maximum(ay1, by1), 0
    )
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    iou_m = inter / np.maximum(union, EPS)
    hull = (np.maximum(ax2, bx2) - np.minimum(ax1, bx1)) * (np.maximum(ay2, by2) - np.minimum(ay1, by1))
    return iou_m, iou_m - (hull - union) / np.maximum(hull, EPS)


def to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` xyxy to centre-size.

    >>> to_cxcywh(np.array([[0., 0, 10, 20]])).tolist()
    [[5.0, 10.0, 10.0, 20.0]]
    """
    return boxes @ _TO_CXCYWH
