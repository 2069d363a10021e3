"""Real Qwen-VL completions, read by the parser and scored by the rewards as a human reads them.

Every case of ``tests/data/real_outputs/cases.jsonl`` is a verbatim output of a Qwen-VL
model taken from a public source, with what a human reads in it (see the README there).
The parser must find exactly the boxes, labels and points a human sees, and a reward whose
ground truth *is* that reading must pay full accuracy, and full format only where the
answer is well formed in the style asked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from perception_r1_verl.parsing import answer_text, parse_answer
from perception_r1_verl.rewards import compute_score, get_reward, max_score

CORPUS = Path(__file__).parent / "data" / "real_outputs" / "cases.jsonl"
CASES = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
TASKS = ("grounding", "counting", "detection", "ocr")
# Larger than any coordinate in the corpus, so clipping to the frame changes nothing.
FRAME = [10_000, 10_000]


def _ids(case):
    return case["id"]


def test_corpus_is_well_formed():
    """Enough cases, unique ids, a source for each, and readings that agree with themselves."""
    assert len(CASES) >= 60
    assert len({c["id"] for c in CASES}) == len(CASES)
    for c in CASES:
        assert c["task"] in TASKS, c["id"]
        assert isinstance(c["completion"], str) and c["completion"], c["id"]
        src = c["source"]
        assert src["repo"] and (src.get("path") or src.get("issue")) and src["note"], c["id"]
        r = c["reading"]
        assert r["n_boxes"] == len(r["boxes"]) == len(r["labels"]), c["id"]
        assert r["n_points"] == len(r["points"]), c["id"]
        assert r["first_box"] == (r["boxes"][0] if r["boxes"] else None), c["id"]
        assert r["first_point"] == (r["points"][0] if r["points"] else None), c["id"]
        if c["task"] == "ocr":
            assert r["text_contains"], c["id"]


@pytest.mark.parametrize("case", [c for c in CASES if c["task"] != "ocr"], ids=_ids)
def test_parser_reads_what_a_human_reads(case):
    r = case["reading"]
    a = parse_answer(case["completion"], think=case["think"])
    got = {
        "n_boxes": len(a.boxes),
        "first_box": a.boxes[0].tolist() if len(a.boxes) else None,
        "labels": list(a.labels),
        "n_points": len(a.points),
        "first_point": a.points[0].tolist() if len(a.points) else None,
        "boxes": a.boxes.tolist(),
        "points": a.points.tolist(),
        "truncated": a.truncated,
    }
    want = {k: r[k] for k in got}
    assert got == want, f"{case['id']} ({case['shape']}): parser differs from the human reading"


@pytest.mark.parametrize("case", [c for c in CASES if c["task"] == "ocr"], ids=_ids)
def test_ocr_answer_text_holds_the_transcript(case):
    r = case["reading"]
    text, _, truncated = answer_text(case["completion"], think=case["think"])
    missing = [s for s in r["text_contains"] if s not in text]
    assert not missing, f"{case['id']}: answer text lacks {missing}"
    assert truncated == r["truncated"], case["id"]
    if r["text"] is not None:
        assert text == r["text"].strip(), f"{case['id']}: answer text is not the transcript a human reads"


def _ground_truth(case) -> dict:
    """The reading as ground truth: a perfect answer to it is what the model wrote."""
    r, task = case["reading"], case["task"]
    if task == "grounding":
        return {"bbox_2d": r["first_box"] or [0, 0, 1, 1], "frame": FRAME}
    if task == "detection":
        objects = [{"bbox_2d": b, "label": label} for b, label in zip(r["boxes"], r["labels"])]
        categories = sorted({label for label in r["labels"] if label is not None})
        return {"objects": objects, "categories": categories, "frame": FRAME}
    if task == "counting":
        centres = [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in r["boxes"]]
        points = r["points"] + centres
        return {"count": len(points), "points": points, "frame": FRAME}
    return {"text": r["text"] if r["text"] is not None else " ".join(r["text_contains"])}


def _distinct(boxes) -> bool:
    return len({tuple(b) for b in boxes}) == len(boxes)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_reward_pays_the_human_reading(case):
    r, task = case["reading"], case["task"]
    truth = json.dumps(_ground_truth(case), ensure_ascii=False)
    extra = {"task": task, "think": case["think"]}
    s = compute_score("real_outputs", case["completion"], truth, extra)
    assert set(s) >= {"score", "format"} and all(isinstance(v, float) for v in s.values()), case["id"]

    if task == "grounding":
        assert s["iou"] == (1.0 if r["n_boxes"] else 0.0), f"{case['id']}: IoU with its own box"
    elif task == "detection" and _distinct(r["boxes"]):
        accuracy = {k: s[k] for k in ("f1", "label_accuracy", "mean_iou")}
        assert accuracy == {"f1": 1.0, "label_accuracy": 1.0, "mean_iou": 1.0}, case["id"]
    elif task == "counting":
        assert (s["ratio"], s["location"]) == (1.0, 1.0), case["id"]
    elif task == "ocr" and r["text"] is not None:
        assert s["edit_similarity"] == 1.0, case["id"]

    if r["truncated"]:
        assert s["format"] == 0.0, f"{case['id']}: a cut-off answer earns no format"
    elif r["well_formed"] is True and (task != "detection" or _distinct(r["boxes"])):
        if task != "ocr" or r["text"] is not None:
            assert s["score"] == pytest.approx(max_score(task)), f"{case['id']}: {s}"
    elif r["well_formed"] is False:
        assert s["format"] < 1.0, f"{case['id']}: a repaired answer is still not well formed"


@pytest.mark.parametrize("family", [None, "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_reward_stays_in_range_for_every_family(family):
    """Whatever style a family is prompted for, real completions score finitely within the task's range."""
    for case in CASES:
        task = case["task"]
        extra = {"task": task, "think": case["think"], "model_family": family}
        s = compute_score("real_outputs", case["completion"], json.dumps(_ground_truth(case)), extra)
        low = -2 * get_reward(task).missing_weight if task == "detection" else 0.0  # FP and FN penalties
        assert all(math.isfinite(v) for v in s.values()), case["id"]
        assert low <= s["score"] <= max_score(task) + 1e-9, f"{case['id']} ({family}): {s}"
