"""Detection scoring against pycocotools run directly, on the real labelme-examples COCO file.

labelme's export numbers annotations (and images, and a background category) from 0,
which is exactly the case pycocotools gets wrong; the reference here renumbers the
annotation ids itself and otherwise calls pycocotools as its README does.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import orjson
import pytest
from data_sources import LABELME, LABELME_MISSING

from perception_r1_verl.eval.dataset import read_split
from perception_r1_verl.eval.score import score
from perception_r1_verl.rewards import render_answer

pytestmark = pytest.mark.skipif(not LABELME.exists(), reason=LABELME_MISSING)


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])
def split(request, tmp_path_factory):
    """The labelme COCO set converted by data_prep's converter, every image kept."""
    from perception_r1_verl.data.coco_det import convert_coco
    from perception_r1_verl.data.options import ConvertOptions

    out = tmp_path_factory.mktemp(request.param) / "val.parquet"
    with contextlib.redirect_stderr(io.StringIO()):
        convert_coco(LABELME, None, out, ConvertOptions(split="val", model_family=request.param), keep_empty=True)
    return out, request.param


def write_responses(path, samples, texts) -> Path:
    with open(path, "w") as f:
        for s, text in zip(samples, texts):
            if text is not None:  # None: the response is missing from the file
                f.write(json.dumps({"index": s.extra_info["index"], "response": text}) + "\n")
    return path


def labelme_dataset(renumber: bool) -> dict:
    data = json.loads(LABELME.read_text())
    if renumber:
        for ann in data["annotations"]:
            ann["id"] += 1
    return data


def pycocotools_stats(dataset: dict, detections: list[dict]) -> np.ndarray:
    """The 12 COCO stats, straight from pycocotools, over every image of the file."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(dataset)
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(detections))
        e = COCOeval(gt, dt, "bbox")
        e.params.imgIds = sorted(gt.getImgIds())
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def noisy_predictions(sample, rng, categories):
    """A plausible answer: jittered, partly missed, partly false, shuffled; in the answer frame.

    Returns the JSON answer text and the expected COCO results (original pixels, score by
    output order) computed here by plain arithmetic.
    """
    fw, fh = sample.ground_truth["frame"]
    items = []
    for obj in sample.ground_truth["objects"]:
        if rng.random() < 0.2:
            continue
        x1, y1, x2, y2 = (np.array(obj["bbox_2d"]) + rng.integers(-12, 13, 4)).tolist()
        items.append({"bbox_2d": [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], "label": obj["label"]})
    for label in list(rng.choice(categories[1:], 2)) + ["zebra"]:
        x, y = int(rng.integers(0, fw - 60)), int(rng.integers(0, fh - 60))
        items.append(
            {"bbox_2d": [x, y, x + int(rng.integers(5, 60)), y + int(rng.integers(5, 60))], "label": str(label)}
        )
    items = [items[i] for i in rng.permutation(len(items))]
    w, h = sample.extra_info["image_size"]
    expected = []
    for rank, item in enumerate(items):
        if item["label"] == "zebra":
            continue
        x1, y1, x2, y2 = item["bbox_2d"]
        x1, x2 = (min(max(v * w / fw, 0), w) for v in (x1, x2))
        y1, y2 = (min(max(v * h / fh, 0), h) for v in (y1, y2))
        expected.append(
            {
                "image_id": int(sample.extra_info["source_id"]),
                "category_id": categories.index(item["label"]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": 1 / (1 + rank),
            }
        )
    return "```json\n" + json.dumps(items) + "\n```", expected


STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def as_stats(metrics: dict) -> np.ndarray:
    return np.array([-1.0 if metrics[k] is None else metrics[k] for k in STATS])


def test_exact_ground_truth_answers_score_ap_1(split, tmp_path):
    data, family = split
    samples = read_split(data)
    texts = [render_answer("detection", s.ground_truth, family) for s in samples]
    m = score(data, write_responses(tmp_path / "r.jsonl", samples, texts), tmp_path / "out", annotations=LABELME)
    # Integer rounding in the answer frame moves edges by < 1 px of the answer frame.
    assert m["AP50"] == 1.0 and m["AP"] == pytest.approx(1.0, abs=0.02)
    assert m["n_images"] == m["n_samples"] == 3 and m["n_detections"] == 12
    assert any("renumbered" in w for w in m["warnings"])


def test_raw_pycocotools_miscounts_annotation_id_0(split):
    """Why ids are renumbered: the same perfect detections lose AP with id 0 left in."""
    data = labelme_dataset(renumber=False)
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in data["annotations"]
    ]
    assert pycocotools_stats(labelme_dataset(renumber=True), perfect)[0] == 1.0
    assert pycocotools_stats(data, perfect)[0] < 1.0


@pytest.mark.parametrize("split", ["qwen2_5_vl"], indirect=True)  # the noisy answers are Qwen2.5-VL JSON
def test_metrics_equal_pycocotools_on_the_same_boxes(split, tmp_path):
    data, _ = split
    samples = read_split(data)
    categories = [c["name"] for c in sorted(labelme_dataset(False)["categories"], key=lambda c: c["id"])]
    seed_aps = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        texts, expected = [], []
        for s in samples:
            text, dets = noisy_predictions(s, rng, categories)
            texts.append(text)
            expected += dets
        out = tmp_path / f"out{seed}"
        m = score(data, write_responses(tmp_path / f"r{seed}.jsonl", samples, texts), out, annotations=LABELME)
        # The headline is the paper's convention (every box 1.0); the rank columns score by output order.
        paper = [{**d, "score": 1.0} for d in expected]
        reference = pycocotools_stats(labelme_dataset(renumber=True), paper)
        np.testing.assert_allclose(as_stats(m), reference, rtol=0, atol=1e-12)
        by_rank = pycocotools_stats(labelme_dataset(renumber=True), expected)
        np.testing.assert_allclose([m["AP_rank"], m["AP50_rank"], m["AP75_rank"]], by_rank[:3], rtol=0, atol=1e-12)
        assert m["AP_confidence"] is None and m["n_without_confidence"] == {"no log-probabilities": 3}
        assert m["n_unknown_label"] == 3 and m["unknown_labels"] == {"zebra": 3}
        written = orjson.loads((out / "detections.json").read_bytes())
        assert len(written) == len(expected)
        for got, want in zip(written, expected):
            assert got["image_id"] == want["image_id"] and got["category_id"] == want["category_id"]
            assert got["score"] == 1.0 and got["score_rank"] == want["score"]
            np.testing.assert_allclose(got["bbox"], want["bbox"], atol=1e-9)
        # detections.json is the file that was evaluated: pycocotools on it gives the same numbers.
        np.testing.assert_allclose(pycocotools_stats(labelme_dataset(True), written), reference, atol=1e-12)
        seed_aps.append((m["AP"], m["AP_rank"]))
    assert any(a != b for a, b in seed_aps)  # the conventions differ on these answers: the columns are not copies


def answers_with_logprobs(samples, true_logprob, false_logprob):
    """Per image: a false box first (a real label, far from its objects), then every object
    exactly. One token per character; the characters of each item get ``true_logprob`` or
    ``false_logprob``, the rest -0.5. Returns the response lines."""
    lines = []
    for s in samples:
        fw, fh = s.ground_truth["frame"]
        objects = s.ground_truth["objects"]
        false = {"bbox_2d": [fw - 6, fh - 6, fw - 1, fh - 1], "label": objects[0]["label"]}
        items = [false] + [{"bbox_2d": o["bbox_2d"], "label": o["label"]} for o in objects]
        text = json.dumps(items)
        logprobs, at = [-0.5] * len(text), 0
        for n, item in enumerate(items):
            at = text.index(json.dumps(item), at)
            end = at + len(json.dumps(item))
            logprobs[at:end] = [false_logprob if n == 0 else true_logprob] * (end - at)
            at = end
        ends = list(range(1, len(text) + 1))
        lines.append({"index": s.extra_info["index"], "response": text, "logprobs": logprobs, "token_ends": ends})
    return lines


def write_lines(path, lines) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("split", ["qwen2_5_vl"], indirect=True)  # JSON answers with labels
def test_token_confidence_that_ranks_true_boxes_first_raises_ap(split, tmp_path):
    """Each image's false box comes first: by output order (paper, rank) it outranks the true
    ones; by token probability it ranks last, and every true box precedes every false one."""
    data, _ = split
    samples = read_split(data)
    lines = answers_with_logprobs(samples, true_logprob=-0.01, false_logprob=-3.0)
    m = score(data, write_lines(tmp_path / "r.jsonl", lines), tmp_path / "o", annotations=LABELME)
    assert m["AP50_confidence"] == 1.0 and m["AP50"] < 1.0 and m["AP50_rank"] < 1.0
    assert m["AP_confidence"] > max(m["AP"], m["AP_rank"])
    assert m["n_without_confidence"] == {} and not any("log-probabilities" in w for w in m["warnings"])
    md = (tmp_path / "o" / "metrics.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| split |"))
    assert "| AP | AP50 |" in header and "| AP_rank |" in header and "| AP_confidence |" in header
    assert "- paper: every box 1.0" in md and "- confidence: geometric mean" in md
    written = orjson.loads((tmp_path / "o" / "detections.json").read_bytes())
    assert {round(d["score_confidence"], 4) for d in written} == {round(np.exp(-0.01), 4), round(np.exp(-3.0), 4)}


@pytest.mark.parametrize("split", ["qwen2_5_vl"], indirect=True)
def test_constant_confidence_equals_the_paper_column(split, tmp_path):
    """Equal confidences tie like the paper's 1.0: pycocotools' stable sort keeps output order."""
    data, _ = split
    samples = read_split(data)
    lines = answers_with_logprobs(samples, true_logprob=-0.2, false_logprob=-0.2)
    for line in lines:
        line["logprobs"] = [-0.2] * len(line["logprobs"])
    m = score(data, write_lines(tmp_path / "r.jsonl", lines), tmp_path / "o", annotations=LABELME, report=False)
    assert (m["AP_confidence"], m["AP50_confidence"], m["AP75_confidence"]) == (m["AP"], m["AP50"], m["AP75"])
    assert m["AP50"] < 1.0  # a case where the order matters: a false box precedes the true ones


@pytest.mark.parametrize("split", ["qwen2_5_vl"], indirect=True)
def test_missing_or_mismatched_logprobs_give_the_paper_column_and_a_count(split, tmp_path):
    data, _ = split
    samples = read_split(data)
    lines = answers_with_logprobs(samples, true_logprob=-0.01, false_logprob=-3.0)
    lines[0]["token_ends"] = lines[0]["token_ends"][:-1]  # another tokenizer's offsets: they miss the end
    lines[0]["logprobs"] = lines[0]["logprobs"][:-1]
    del lines[1]["logprobs"]  # an older file's line
    lines[2]["logprobs"][3] = "nan"
    m = score(data, write_lines(tmp_path / "r.jsonl", lines), tmp_path / "o", annotations=LABELME, report=False)
    assert m["AP_confidence"] is None and m["AP50"] < 1.0
    assert m["n_without_confidence"] == {"log-probabilities do not match the response": 2, "no log-probabilities": 1}
    assert any("3 answers with boxes have no usable log-probabilities" in w for w in m["warnings"])


def test_unparsable_and_missing_responses_count_as_images_without_detections(split, tmp_path):
    data, family = split
    samples = read_split(data)
    texts = [render_answer("detection", samples[0].ground_truth, family), '[{"bbox_2d": [1, 2', None]
    m = score(data, write_responses(tmp_path / "r.jsonl", samples, texts), tmp_path / "out", annotations=LABELME)
    assert (m["n_samples"], m["n_images"], m["n_missing"], m["n_unparsable"]) == (3, 3, 1, 0)
    assert m["n_truncated"] == 1  # the cut-off JSON parses to zero boxes, and is flagged
    only_first = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in labelme_dataset(True)["annotations"]
        if a["image_id"] == 0
    ]
    # AR100 with 3 of 12 objects found (scores differ, matches do not):
    assert m["AR100"] == pytest.approx(pycocotools_stats(labelme_dataset(True), only_first)[8], abs=0.02)
    assert m["AR100"] < 0.5
    records = [orjson.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_bytes().splitlines()]
    assert [(r["n_pred"], r["tp"], r["fp"], r["fn"]) for r in records] == [(3, 3, 0, 0), (0, 0, 0, 3), (0, 0, 0, 6)]
    assert [r["score"] for r in records] == [1.0, 0.0, 0.0]  # per-image F1 at IoU 0.5 ranks the report


def test_no_detections_at_all_score_zero_not_crash(split, tmp_path):
    data, _ = split
    samples = read_split(data)
    m = score(
        data,
        write_responses(tmp_path / "r.jsonl", samples, ["no objects here"] * 3),
        tmp_path / "o",
        annotations=LABELME,
    )
    assert m["AP"] == 0.0 and m["AR100"] == 0.0 and m["n_unparsable"] == 3
    assert orjson.loads((tmp_path / "o" / "detections.json").read_bytes()) == []


def test_ground_truth_from_the_split_without_annotation_file(split, tmp_path):
    data, family = split
    samples = read_split(data)
    texts = [render_answer("detection", s.ground_truth, family) for s in samples]
    m = score(data, write_responses(tmp_path / "r.jsonl", samples, texts), tmp_path / "o")
    assert m["AP"] == 1.0 and m["ground_truth"] == "split"
    assert any("--annotations" in w for w in m["warnings"])


def test_an_annotation_file_of_other_images_is_refused(split, tmp_path):
    data, _ = split
    other = labelme_dataset(renumber=False)
    for img in other["images"]:
        img["width"] += 10
    (tmp_path / "other.json").write_text(json.dumps(other))
    samples = read_split(data)
    responses = write_responses(tmp_path / "r.jsonl", samples, [""] * 3)
    with pytest.raises(ValueError, match="image_size differ"):
        score(data, responses, tmp_path / "o", annotations=tmp_path / "other.json")


def test_rows_without_an_answer_frame_are_an_error():
    """One frame rule (frames.row_frame) for evaluation, report and data checks: the ground
    truth's frame, else the family's frame of input_size; neither, or both disagreeing, raises."""
    from perception_r1_verl.eval.dataset import Sample
    from perception_r1_verl.eval.detection import from_split

    objects = [{"bbox_2d": [100, 100, 500, 500], "label": "cat"}]

    def sample(truth, info):
        return Sample(0, "0", "detection", "coco", {"objects": objects, **truth}, {"image_size": [200, 100], **info})

    qwen2 = {"model_family": "qwen2_vl", "input_size": [196, 112]}
    for truth, info in [({"frame": [1000, 1000]}, {}), ({}, qwen2), ({"frame": [1000, 1000]}, qwen2)]:
        gt = from_split([sample(truth, info)])
        assert gt.coco.dataset["annotations"][0]["bbox"] == [20.0, 10.0, 80.0, 40.0]
    with pytest.raises(ValueError, match="no answer frame"):
        from_split([sample({}, {"model_family": "qwen2_vl"})])
    with pytest.raises(ValueError, match="is not the qwen2_5_vl frame"):
        from_split([sample({"frame": [1000, 1000]}, {"model_family": "qwen2_5_vl", "input_size": [196, 112]})])
