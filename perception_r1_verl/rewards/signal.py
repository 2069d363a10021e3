"""Is there a learning signal? Per-step group statistics of GRPO rollouts, pure (no verl).

GRPO learns only from groups (verl's ``uid``: the rollouts of one prompt) whose rewards
differ. These functions take one step's columns and return, per data source:

- ``groups/zero_signal``: share of groups whose rewards are all equal, of which
  ``groups/all_zero`` (all 0) and ``groups/all_max`` (all the task's maximum) are shares
  of all groups too; a group with a ``reward_error`` or ``reward_timeout`` counts in
  ``groups/error`` and in none of the others;
- ``groups/reward_std``: mean within-group reward standard deviation (error groups left out);
- ``score/<bucket>/mean``: reward by difficulty bucket of the row's ground truth
  (:func:`difficulty_bucket`);
- ``truncated``: share of responses cut at the length limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from perception_r1_verl.frames import frame_of

# Bucket edges: objects as the detection curriculum's stages (<=3, 4-10, >10); a grounding
# box's share of the frame near COCO's small/medium/large at 640x480 (32^2, 96^2 pixels);
# OCR text by characters (a line, a paragraph, a page).
OBJECT_EDGES = (3, 10)
AREA_EDGES = (0.0033, 0.03)
TEXT_EDGES = (100, 1000)


def _bucket(value: float, edges: Sequence[float], unit: str) -> str:
    """``unit<=edge`` of the first edge ``value`` does not pass, ``unit>last`` otherwise.

    >>> _bucket(2, (3, 10), "objects"), _bucket(11, (3, 10), "objects")
    ('objects<=3', 'objects>10')
    """
    for edge in edges:
        if value <= edge:
            return f"{unit}<={edge:g}"
    return f"{unit}>{edges[-1]:g}"


def difficulty_bucket(task: str, ground_truth: Mapping) -> str | None:
    """The difficulty bucket of a row, from its parsed ground truth (``None``: no bucket).

    >>> difficulty_bucket("detection", {"objects": [{"bbox_2d": [0, 0, 1, 1]}] * 5})
    'objects<=10'
    >>> difficulty_bucket("counting", {"count": 0})
    'objects<=3'
    >>> difficulty_bucket("grounding", {"bbox_2d": [0, 0, 500, 500], "frame": [1000, 1000]})
    'area>0.03'
    >>> difficulty_bucket("ocr", {"text": "x" * 150})
    'chars<=1000'
    >>> difficulty_bucket("vqa", {}) is None
    True
    """
    if task == "detection":
        return _bucket(len(ground_truth.get("objects") or ()), OBJECT_EDGES, "objects")
    if task == "counting":
        return _bucket(int(ground_truth.get("count", 0)), OBJECT_EDGES, "objects")
    if task == "grounding":
        x1, y1, x2, y2 = (float(v) for v in ground_truth["bbox_2d"])
        width, height = frame_of(ground_truth)
        return _bucket(max(x2 - x1, 0) * max(y2 - y1, 0) / (width * height), AREA_EDGES, "area")
    if task == "ocr":
        return _bucket(len(ground_truth.get("text") or ""), TEXT_EDGES, "chars")
    return None


def group_stats(scores: np.ndarray, uids: Sequence, errors: np.ndarray, max_score: float) -> dict[str, float]:
    """Group shares and mean within-group std of one data source's rollouts (vectorised).

    >>> s = np.array([0, 0, 2, 2, 0, 1, 0, 0.0])
    >>> group_stats(s, ["a", "a", "b", "b", "c", "c", "d", "d"], np.array([0, 0, 0, 0, 0, 0, 1, 0]), 2.0)
    {'groups/zero_signal': 0.5, 'groups/all_zero': 0.25, 'groups/all_max': 0.25, 'groups/error': 0.25, 'groups/reward_std': 0.1667}
    """
    _, group = np.unique(np.asarray(uids, dtype=object).astype(str), return_inverse=True)
    n = np.bincount(group).astype(float)
    error = np.bincount(group, weights=errors.astype(float)) > 0
    mean = np.bincount(group, weights=scores) / n
    std = np.sqrt(np.maximum(np.bincount(group, weights=scores**2) / n - mean**2, 0.0))
    lo = np.full(len(n), np.inf)
    hi = np.full(len(n), -np.inf)
    np.minimum.at(lo, group, scores)
    np.maximum.at(hi, group, scores)
    flat = (hi - lo <= 1e-9) & ~error
    return {
        "groups/zero_signal": float(flat.mean()),
        "groups/all_zero": float((flat & (np.abs(hi) <= 1e-9)).mean()),
        "groups/all_max": float((flat & (lo >= max_score - 1e-9)).mean()),
        "groups/error": float(error.mean()),
        "groups/reward_std": round(float(std[~error].mean()), 4) if (~error).any() else float("nan"),
    }


def bucket_means(scores: np.ndarray, buckets: Sequence[str | None]) -> dict[str, float]:
    """Mean score per difficulty bucket (rows without a bucket left out).

    >>> bucket_means(np.array([1.0, 0.0, 2.0]), ["objects<=3", None, "objects<=3"])
    {'score/objects<=3/mean': 1.5}
    """
    labels = np.asarray(buckets, dtype=object)
    return {
        f"score/{b}/mean": float(scores[labels == b].mean()) for b in dict.fromkeys(x for x in buckets if x is not None)
    }


def signal_metrics(
    scores: Sequence[float],
    uids: Sequence,
    sources: Sequence,
    errors: Sequence[bool],
    buckets: Sequence[str | None],
    truncated: Sequence[bool] | None,
    max_scores: Mapping[str, float],
    prefix: str,
) -> dict[str, float]:
    """:func:`group_stats`, :func:`bucket_means` and the truncated share, per data source,
    as ``<prefix>/<source>/<name>``; a source absent from the step has no key.

    >>> m = signal_metrics([0, 0, 1, 0], ["a", "a", "b", "b"], ["ocr"] * 4, [0] * 4, ["chars<=100"] * 4,
    ...                    [1, 0, 0, 0], {"ocr": 2.0}, "perception")
    >>> m["perception/ocr/groups/zero_signal"], m["perception/ocr/truncated"], m["perception/ocr/score/chars<=100/mean"]
    (0.5, 0.25, 0.25)
    """
    scores = np.asarray(scores, dtype=float)
    source_of = np.asarray([str(s) for s in sources], dtype=object)
    errors = np.asarray(errors, dtype=bool)
    uids = np.asarray(uids, dtype=object)
    buckets = np.asarray(buckets, dtype=object)
    metrics = {}
    for source in dict.fromkeys(source_of):
        rows = source_of == source
        found = {
            **group_stats(scores[rows], uids[rows], errors[rows], max_scores[source]),
            **bucket_means(scores[rows], buckets[rows].tolist()),
        }
        if truncated is not None:
            found["truncated"] = float(np.asarray(truncated, dtype=float)[rows].mean())
        metrics.update({f"{prefix}/{source}/{name}": value for name, value in found.items()})
    return metrics


class ZeroSignalWatch:
    """Says when a data source's zero-signal share has stayed above ``threshold`` for
    ``steps`` consecutive steps (once per stretch).

    >>> watch = ZeroSignalWatch(threshold=0.9, steps=2)
    >>> [watch.update({"perception/coco/groups/zero_signal": v}) for v in (0.95, 0.97, 0.99, 0.5)]
    [[], ['perception/coco/groups/zero_signal'], [], []]
    """

    def __init__(self, threshold: float, steps: int):
        self.threshold, self.steps = threshold, steps
        self.runs: dict[str, int] = {}

    def update(self, metrics: Mapping[str, float]) -> list[str]:
        alarms = []
        for key, value in metrics.items():
            if not key.endswith("/groups/zero_signal"):
                continue
            self.runs[key] = self.runs.get(key, 0) + 1 if value > self.threshold else 0
            if self.runs[key] == self.steps:
                alarms.append(key)
        return alarms
