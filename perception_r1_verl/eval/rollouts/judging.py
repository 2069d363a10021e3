"""Judging a matched rollout (unparsable, suspected reward hacks), its components (dumped or
recomputed) and each step's summary.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ... import rewards
from ...boxes import pairwise_iou_giou
from ...parsing import Answer, parse_answer
from ..dataset import Sample
from ..metrics import get_metric
from .dump import COMPONENTS, Rollout
from .matching import Row

# Box spam: more than SPAM_FACTOR times the ground-truth objects and SPAM_MARGIN more.
SPAM_FACTOR, SPAM_MARGIN = 3, 5
REPEAT_IOU = 0.9  # two answer boxes overlapping this much are one box repeated
HACKS = {
    "box_spam": f"more than {SPAM_FACTOR}x the ground-truth objects and at least {SPAM_MARGIN} more",
    "repeated": f"two answer boxes overlap at IoU >= {REPEAT_IOU}, or a point is given twice",
    "empty": "no answer text, or an empty list where the ground truth has objects",
}
UNPARSABLE_RULE = (
    "grounding, counting, detection: no answer in any recognised style (JSON, box tokens, "
    "plain [x1, y1, x2, y2]) in a non-empty answer; OCR: think/answer tags not as the prompt asked"
)


def n_truth(task: str, gt: dict) -> int:
    """Objects in a ground truth, as the task's metric counts them (0 for OCR).

    >>> n_truth("grounding", {"bbox_2d": [0, 0, 1, 1]}), n_truth("counting", {"count": 7, "points": []})
    (1, 7)
    """
    return get_metric(task).n_truth(gt)


def judge(task: str, answer: Answer, n_gt: int) -> dict[str, str]:
    """The rules a parsed answer breaks: ``unparsable`` and the :data:`HACKS`, explained.

    >>> judge("grounding", parse_answer(str([[1, 2, 30, 40]] * 8)), 1)
    {'box_spam': '8 objects, ground truth 1', 'repeated': '28 repeated pairs'}
    >>> judge("detection", parse_answer("[]"), 3), judge("counting", parse_answer("I see none"), 2)
    ({'empty': 'empty list, ground truth 3'}, {'unparsable': 'no answer found'})
    """
    flags = {}
    if not answer.text.strip():
        flags["empty"] = "no answer text"
        return flags
    if not get_metric(task).boxes:  # free text: only the tags can be wrong
        if not answer.tags_ok:
            flags["unparsable"] = "think/answer tags not as asked"
        return flags
    if not answer.parsed:
        flags["unparsable"] = "no answer found"
        return flags
    if answer.n_items == 0 and n_gt > 0:
        flags["empty"] = f"empty list, ground truth {n_gt}"
    if answer.n_items > max(SPAM_FACTOR * n_gt, n_gt + SPAM_MARGIN):
        flags["box_spam"] = f"{answer.n_items} objects, ground truth {n_gt}"
    pairs = 0
    if len(answer.boxes) > 1:
        overlap = pairwise_iou_giou(answer.boxes, answer.boxes)[0]
        pairs += int(np.triu(overlap >= REPEAT_IOU, 1).sum())
    if len(answer.points) > 1:
        pairs += len(answer.points) - len(np.unique(answer.points, axis=0))
    if pairs:
        flags["repeated"] = f"{pairs} repeated pair{'s' * (pairs > 1)}"
    return flags


def _recompute(rollout: Rollout, sample: Sample) -> dict | None:
    info = dict(sample.extra_info)
    if info.get("model_family") == "qwen2_vl":
        info.pop("model_family")  # the dump dropped the box tokens this family is asked for
    try:
        return rewards.compute_score(sample.data_source, rollout.output, rollout.gts, extra_info=info)
    except (ValueError, TypeError):
        return None


def analyse(rollout: Rollout, row: Row, counts: Counter) -> None:
    """Fill ``rollout``'s task, parsed answer, flags and components from its matched ``row``."""
    sample = row.sample
    rollout.data, rollout.row, rollout.task = row.data, sample.row, sample.task
    rollout.answer = parse_answer(rollout.output, think=sample.think)
    rollout.flags = judge(sample.task, rollout.answer, n_truth(sample.task, sample.ground_truth))
    names = rewards.get_reward_cls(sample.task).components
    if rollout.dumped is not None:
        rollout.components = {k: rollout.dumped[k] for k in names if k in rollout.dumped}
        return
    result = _recompute(rollout, sample)
    if result is None:
        counts["reward_errors"] += 1
        return
    rollout.components = {k: float(result[k]) for k in names if k in result}
    rollout.recomputed_score = float(result["score"])
    if abs(rollout.recomputed_score - rollout.score) > 1e-6:
        counts["score_mismatches"] += 1


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def step_summary(rollouts: list[Rollout]) -> dict:
    """Means and shares of one step's rollouts; shares are over the matched ones.

    >>> r = Rollout(1, 1, "1.jsonl:1", "", "", None, 2.0, None, None, row=0, task="grounding", components={"iou": 0.5})
    >>> step_summary([r, Rollout(1, 2, "1.jsonl:2", "", "", None, 0.0, None, None)])["score"]
    1.0
    """
    matched = [r for r in rollouts if r.row is not None]
    out = {"rollouts": len(rollouts), "matched": len(matched), "score": _mean(r.score for r in rollouts)}
    for rule in ("unparsable", *HACKS):
        out[rule] = sum(rule in r.flags for r in matched) / len(matched) if matched else None
    for key in COMPONENTS:
        out[key] = _mean(r.components.get(key) for r in matched)
    return out
