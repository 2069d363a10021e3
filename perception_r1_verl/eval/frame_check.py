"""Which coordinate frame the answers look like, against the frame the split expects.

The most reported failure of box rewards and metrics is a model answering in one frame
while the data expects another: 0-1000 (Qwen2-VL, Qwen3-VL), pixels of the resized input
(Qwen2.5-VL), pixels of the original image (some datasets), 0-1. Scores then sit near 0
and nothing says why. Here every row's predicted boxes are read as if written in each
candidate frame, mapped into the row's own answer frame (``frames.row_frame``) and
compared with its ground truth; the mean fit per candidate says which frame the answers
look like. A row without ``image_size`` and ``input_size`` (the candidates' sizes) makes
the split "frame unknown": no guess.

Fit of one row (each box metric's ``frame_fit``): grounding, the IoU of the first box;
detection, the mean over predicted boxes of the best IoU with any ground-truth object
(labels ignored); counting, the share of predicted boxes that hold a ground-truth point. Another frame is reported when its fit
is at least ``RATIO`` times the expected frame's *and* ``FLOOR`` above it, over at least
``MIN_ROWS`` rows with boxes (docs/evaluation.md gives the measurement behind them).
"""

from __future__ import annotations

import numpy as np

from ..boxes import iou
from ..frames import RELATIVE_SCALE, clip_box, row_frame, scale_box

RATIO = 2.0  # another frame must fit at least twice as well ...
FLOOR = 0.1  # ... and 0.1 better in absolute terms (IoU or hit share)
MIN_ROWS = 8  # fewer rows with boxes: too few to say
MAX_BOXES = 100  # boxes per answer looked at: bounded cost on box-spam answers

FRAMES = ("relative 0-1000", "relative 0-1", "pixels of the resized input", "pixels of the original image")


def candidate_sizes(extra_info: dict) -> dict | None:
    """``{frame name: (width, height)}`` of a row, or None when its sizes are not known.

    >>> candidate_sizes({"input_size": [644, 476], "image_size": [640, 480]})["pixels of the original image"]
    (640.0, 480.0)
    >>> candidate_sizes({"input_size": [644, 476]}) is None
    True
    """
    try:
        resized = tuple(float(v) for v in extra_info["input_size"])
        original = tuple(float(v) for v in extra_info["image_size"])
    except (KeyError, TypeError, ValueError):
        return None
    if len(resized) != 2 or len(original) != 2 or min(*resized, *original) <= 0:
        return None
    return dict(zip(FRAMES, [(RELATIVE_SCALE, RELATIVE_SCALE), (1.0, 1.0), resized, original], strict=True))


def expected_name(frame: tuple[float, float], sizes: dict) -> str | None:
    """The candidate whose size is the row's frame (pixels of the input before the original
    when both are); None when none is.

    >>> expected_name((1000.0, 1000.0), candidate_sizes({"input_size": [28, 28], "image_size": [30, 30]}))
    'relative 0-1000'
    """
    for name, size in sizes.items():
        if tuple(size) == tuple(frame):
            return name
    return None


def grounding_fit(boxes: list, gt: dict) -> float:
    """The IoU of the first box with the referred object's.

    >>> grounding_fit([[0, 0, 10, 10]], {"bbox_2d": [0, 0, 10, 20]})
    0.5
    """
    return iou(boxes[0], gt["bbox_2d"])


def detection_fit(boxes: list, gt: dict) -> float:
    """The mean over boxes of the best IoU with any object, labels ignored.

    >>> detection_fit([[0, 0, 10, 10], [50, 50, 60, 60]], {"objects": [{"bbox_2d": [0, 0, 10, 10]}]})
    0.5
    """
    truth = [o["bbox_2d"] for o in gt.get("objects") or []]
    return float(np.mean([max((iou(b, t) for t in truth), default=0.0) for b in boxes]))


def counting_fit(boxes: list, gt: dict) -> float | None:
    """The share of boxes that hold a ground-truth point; None without points (PixMo test).

    >>> counting_fit([[0, 0, 10, 10], [50, 50, 60, 60]], {"points": [[5, 5]]}), counting_fit([[0, 0, 1, 1]], {})
    (0.5, None)
    """
    points = gt.get("points") or []
    if not points:
        return None
    p = np.asarray(points, dtype=np.float64)[:, :2]
    b = np.asarray(boxes, dtype=np.float64)
    inside = (p[None, :, 0] >= b[:, None, 0]) & (p[None, :, 0] <= b[:, None, 2])
    inside &= (p[None, :, 1] >= b[:, None, 1]) & (p[None, :, 1] <= b[:, None, 3])
    return float(np.mean(inside.any(axis=1)))


def verdict(fits: dict, expected: str, n_rows: int) -> str | None:
    """The frame the answers look like when it is clearly not ``expected``; else None.

    >>> verdict({"relative 0-1000": 0.02, "pixels of the resized input": 0.6}, "relative 0-1000", 50)
    'pixels of the resized input'
    >>> verdict({"relative 0-1000": 0.30, "pixels of the resized input": 0.35}, "relative 0-1000", 50)
    >>> verdict({"relative 0-1000": 0.0, "pixels of the resized input": 0.6}, "relative 0-1000", 3)
    """
    if n_rows < MIN_ROWS:
        return None
    best = max(fits, key=fits.get)
    if best == expected:
        return None
    gain = fits[best] - fits[expected]
    return best if fits[best] >= RATIO * fits[expected] and gain >= FLOOR else None


def fix_for(looks_like: str, expected: str) -> str:
    """What to change when the answers are in ``looks_like`` and the split in ``expected``.

    >>> fix_for("relative 0-1000", "pixels of the resized input")[:60]
    'the model answers 0-1000 like Qwen2-VL / Qwen3-VL: prepare t'
    """
    if looks_like == "relative 0-1000":
        return (
            "the model answers 0-1000 like Qwen2-VL / Qwen3-VL: prepare the split with perception-r1-prep "
            "--model-family qwen2_vl or qwen3_vl (suite: --model-family), or train it on 0-1000 data"
        )
    if looks_like == "pixels of the resized input":
        return (
            "the model answers in pixels of its resized input like Qwen2.5-VL: prepare the split with "
            "perception-r1-prep --model-family qwen2_5_vl (suite: --model-family qwen2_5_vl)"
        )
    return (
        f"the model answers in {looks_like}, which no --model-family prepares (it was likely trained on such "
        f"data): rescale its answers to the split's frame ({expected}), or fine-tune it on data prepared here"
    )


def diagnose(fit, samples, answers) -> dict:
    """``metrics.json``'s ``frame_diagnosis`` for a split of box answers; ``fit(boxes, gt)``
    is the task metric's ``frame_fit`` (one of the functions above).

    ``status``: ``"ok"``, ``"mismatch"`` (with ``looks_like`` and ``fix``), ``"frame unknown"``
    (rows without the sizes, or a frame none of the candidates is), or ``"too few boxes"``.
    """
    per_frame = {name: [] for name in FRAMES}
    expected = None
    for s, a in zip(samples, answers, strict=True):
        sizes = candidate_sizes(s.extra_info)
        try:
            frame = row_frame(s.ground_truth, s.extra_info)
        except ValueError:
            frame = None
        name = expected_name(frame, sizes) if sizes and frame else None
        if name is None:
            return {"status": "frame unknown", "why": f"row {s.index} lacks input_size/image_size or a known frame"}
        if expected not in (None, name):
            return {"status": "frame unknown", "why": f"rows expect different frames ({expected}, {name})"}
        expected = name
        boxes = a.boxes[:MAX_BOXES].tolist()
        if not boxes:
            continue
        for candidate, size in sizes.items():
            # clipped to the frame as the metrics clip, so the expected frame's fit is the metric's IoU
            value = fit([clip_box(scale_box(b, size, frame), frame) for b in boxes], s.ground_truth)
            if value is not None:
                per_frame[candidate].append(value)
    n_rows = len(per_frame[expected]) if expected else 0
    if n_rows < MIN_ROWS:
        return {"status": "too few boxes", "expected": expected, "rows": n_rows}
    fits = {name: float(np.mean(v)) for name, v in per_frame.items()}
    looks_like = verdict(fits, expected, n_rows)
    out = {"status": "ok" if looks_like is None else "mismatch", "expected": expected, "rows": n_rows, "fit": fits}
    if looks_like is not None:
        out |= {"looks_like": looks_like, "fix": fix_for(looks_like, expected)}
    return out


def diagnosis_line(d: dict) -> str | None:
    """The one line ``score`` prints for a mismatch; None otherwise.

    >>> d = {"status": "mismatch", "expected": "a", "looks_like": "b", "fit": {"a": 0.01, "b": 0.5}, "fix": "do x"}
    >>> diagnosis_line(d)
    'frame: the answers look like b (fit 0.500), the split expects a (fit 0.010); do x'
    """
    if d.get("status") != "mismatch":
        return None
    fits = d["fit"]
    return (
        f"frame: the answers look like {d['looks_like']} (fit {fits[d['looks_like']]:.3f}), "
        f"the split expects {d['expected']} (fit {fits[d['expected']]:.3f}); {d['fix']}"
    )
