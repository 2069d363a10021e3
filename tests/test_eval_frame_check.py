"""The frame diagnosis: it fires on answers scored in another family's frame and stays
silent on the right one, on the layouts the converters write (COCO-sized images, each
family's frame and input size)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_fixtures import make_split, write_responses

from perception_r1_verl.eval.frame_check import FLOOR, FRAMES, RATIO, grounding_fit, verdict
from perception_r1_verl.eval.score import score
from perception_r1_verl.frames import answer_frame, clip_box, scale_box, smart_resize

SIZES = [(640, 480), (640, 427), (500, 375), (480, 640), (1024, 768), (612, 612), (333, 500), (1280, 960)] * 2


def layout(family: str, rng, n_objects: int = 1):
    """Ground truths in ``family``'s frame and each row's sizes, as the converters write them."""
    gts, extra = [], []
    for w, h in SIZES:
        size = smart_resize(w, h)
        frame = answer_frame(family, size)
        boxes = []
        for _ in range(n_objects):
            bw, bh = rng.uniform(0.1, 0.5) * frame[0], rng.uniform(0.1, 0.5) * frame[1]
            x, y = rng.uniform(0, frame[0] - bw), rng.uniform(0, frame[1] - bh)
            boxes.append([round(x), round(y), round(x + bw), round(y + bh)])
        gts.append({"frame": list(frame), "boxes": boxes})
        extra.append({"image_size": [w, h], "input_size": list(size), "model_family": family})
    return gts, extra


def answer(box, src, dst, rng, jitter=0.05) -> list[int]:
    """A fair answer box: the truth a little off, written in frame ``dst``."""
    b = np.array(box, dtype=float)
    b += rng.normal(0, jitter, 4) * np.array([b[2] - b[0], b[3] - b[1]] * 2)
    return [round(v) for v in scale_box(b.tolist(), src, dst)]


def grounding(tmp_path, family, answer_frame_of, name="g"):
    rng = np.random.default_rng(0)
    gts, extra = layout(family, rng)
    rows = [{"bbox_2d": g["boxes"][0], "frame": g["frame"]} for g in gts]
    texts = [
        json.dumps([{"bbox_2d": answer(g["boxes"][0], g["frame"], answer_frame_of(e), rng), "label": "dog"}])
        for g, e in zip(gts, extra)
    ]
    data = make_split(tmp_path / f"{name}.parquet", "grounding", rows, family=family, extra=extra)
    return score(data, write_responses(tmp_path / f"{name}.jsonl", texts), tmp_path / name, report=False)


def relative(extra):
    return (1000, 1000)


def resized_pixels(extra):
    return tuple(extra["input_size"])


def test_0_1000_answers_on_a_qwen2_5_vl_pixel_split_are_diagnosed(tmp_path):
    m = grounding(tmp_path, "qwen2_5_vl", relative)
    d = m["frame_diagnosis"]
    assert (d["status"], d["expected"], d["looks_like"]) == ("mismatch", "pixels of the resized input", FRAMES[0])
    assert d["fit"]["relative 0-1000"] > 0.6 > 0.2 > d["fit"]["pixels of the resized input"]
    assert m["mIoU"] < 0.2  # what the user would otherwise see, and nothing saying why
    assert "--model-family qwen2_vl" in d["fix"]
    line = next(w for w in m["warnings"] if w.startswith("frame: "))
    assert "look like relative 0-1000" in line and "expects pixels of the resized input" in line
    assert line in (tmp_path / "g" / "metrics.md").read_text()


def test_pixel_answers_on_a_qwen2_vl_split_are_diagnosed(tmp_path):
    d = grounding(tmp_path, "qwen2_vl", resized_pixels)["frame_diagnosis"]
    assert (d["status"], d["expected"], d["looks_like"]) == ("mismatch", "relative 0-1000", FRAMES[2])
    assert "--model-family qwen2_5_vl" in d["fix"]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_answers_in_the_split_frame_are_not_diagnosed(tmp_path, family):
    m = grounding(tmp_path, family, resized_pixels if family == "qwen2_5_vl" else relative)
    assert m["frame_diagnosis"]["status"] == "ok" and m["mIoU"] > 0.6
    assert not any(w.startswith("frame: ") for w in m["warnings"])


def test_detection_and_counting_answers_in_another_frame(tmp_path):
    rng = np.random.default_rng(1)
    gts, extra = layout("qwen2_5_vl", rng, n_objects=2)
    rows = [{"frame": g["frame"], "objects": [{"bbox_2d": b, "label": "dog"} for b in g["boxes"]]} for g in gts]
    texts = [
        json.dumps([{"bbox_2d": answer(b, g["frame"], (1000, 1000), rng), "label": "dog"} for b in g["boxes"]])
        for g in gts
    ]
    data = make_split(tmp_path / "d.parquet", "detection", rows, extra=extra)
    m = score(data, write_responses(tmp_path / "d.jsonl", texts), tmp_path / "d", report=False)
    assert (m["frame_diagnosis"]["status"], m["frame_diagnosis"]["looks_like"]) == ("mismatch", FRAMES[0])
    # Counting: the object centres as points; boxes written 0-1000.
    points = [[[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in g["boxes"]] for g in gts]
    rows = [{"frame": g["frame"], "count": 2, "points": p} for g, p in zip(gts, points)]
    data = make_split(tmp_path / "c.parquet", "counting", rows, extra=extra)
    m = score(data, write_responses(tmp_path / "c.jsonl", texts), tmp_path / "c", report=False)
    d = m["frame_diagnosis"]
    assert (d["status"], d["looks_like"]) == ("mismatch", FRAMES[0]) and d["fit"][FRAMES[0]] == 1.0


def test_rows_without_sizes_are_frame_unknown_not_guessed(tmp_path):
    rng = np.random.default_rng(2)
    gts, extra = layout("qwen2_5_vl", rng)
    extra = [{**e, "input_size": None} for e in extra]
    rows = [{"bbox_2d": g["boxes"][0], "frame": g["frame"]} for g in gts]
    texts = [json.dumps(scale_box(g["boxes"][0], g["frame"], (1000, 1000))) for g in gts]
    data = make_split(tmp_path / "u.parquet", "grounding", rows, extra=extra)
    m = score(data, write_responses(tmp_path / "u.jsonl", texts), tmp_path / "u", report=False)
    assert m["frame_diagnosis"]["status"] == "frame unknown" and "input_size" in m["frame_diagnosis"]["why"]
    assert not any(w.startswith("frame: ") for w in m["warnings"])


def test_ocr_has_no_frame_diagnosis(tmp_path):
    data = make_split(tmp_path / "o.parquet", "ocr", [{"text": "a b"}])
    assert "frame_diagnosis" not in score(data, write_responses(tmp_path / "o.jsonl", ["a b"]), tmp_path / "o")


def simulated_fits(answers_in: str, split: str, jitter: float, rng, n: int = 400) -> dict:
    """Mean IoU under each candidate frame of ``n`` answers written in ``answers_in`` to a
    split in ``split``, the truth off by ``jitter`` of its size (COCO-like image sizes)."""
    fits = {f: [] for f in FRAMES}
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        sizes = dict(zip(FRAMES, [(1000, 1000), (1, 1), smart_resize(w, h), (w, h)]))
        frame = sizes[split]
        bw, bh = rng.uniform(0.05, 0.6) * frame[0], rng.uniform(0.05, 0.6) * frame[1]
        x, y = rng.uniform(0, frame[0] - bw), rng.uniform(0, frame[1] - bh)
        truth = [x, y, x + bw, y + bh]
        p = np.array(truth) + rng.normal(0, jitter, 4) * np.array([bw, bh, bw, bh])
        p = scale_box([min(p[0], p[2]), min(p[1], p[3]), max(p[0], p[2]), max(p[1], p[3])], frame, sizes[answers_in])
        for f, size in sizes.items():
            fits[f].append(grounding_fit([clip_box(scale_box(p, size, frame), frame)], {"bbox_2d": truth}))
    return {f: float(np.mean(v)) for f, v in fits.items()}


def test_the_rule_thresholds_against_simulated_models():
    """The measurement behind RATIO and FLOOR (docs/evaluation.md): answers in the right
    frame, from near-perfect to near-random, never look better in another frame by more
    than chance (ratio <= 1.1, gain <= 0.01), so the rule never fires; answers in another
    family's frame fire it from a mean IoU of 0.4 down."""
    rng = np.random.default_rng(0)
    for split in (FRAMES[0], FRAMES[2]):
        for jitter in (0.02, 0.1, 0.3, 0.6, 1.5):
            fits = simulated_fits(split, split, jitter, rng)
            best_other = max(v for f, v in fits.items() if f != split)
            assert best_other <= 1.1 * fits[split] and best_other - fits[split] <= 0.01
            assert verdict(fits, split, 400) is None
        other = FRAMES[2] if split == FRAMES[0] else FRAMES[0]
        for jitter in (0.1, 0.3):
            fits = simulated_fits(other, split, jitter, rng)
            assert verdict(fits, split, 400) == other
            assert fits[other] >= RATIO * fits[split] and fits[other] - fits[split] >= FLOOR
