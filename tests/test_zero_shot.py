"""The recipes' zero-shot preflight (recipe/zero_shot.py): the base model generates and is
scored on a few val rows of each task; a frame mismatch stops the recipe."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from eval_fixtures import make_split

from perception_r1_verl.recipe import zero_shot as zs

# Qwen2.5-VL rows: boxes in pixels of the 100x100 input.
BOXES = [[10 + i, 20, 60 + i, 70] for i in range(10)]


def grounding_split(path, family="qwen2_5_vl", scale=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    gts = [{"bbox_2d": [v * scale for v in b], "frame": [100 * scale] * 2} for b in BOXES]
    return make_split(path, "grounding", gts, family=family)


def test_the_first_rows_are_kept_images_included(tmp_path):
    split = grounding_split(tmp_path / "val.parquet")
    head = zs.head_rows(split, 3, tmp_path / "head" / "rows.parquet")
    rows, source = pq.read_table(head).to_pylist(), pq.read_table(split).to_pylist()
    assert rows == source[:3] and rows[0]["images"][0]["bytes"]
    assert pq.read_table(zs.head_rows(split, 50, tmp_path / "all.parquet")).num_rows == len(BOXES)


def fake_generate(scale):
    """``generate`` writing the truth of every row, multiplied by ``scale`` (10: 0-1000 answers)."""

    def generate(model, data, out, **kwargs):
        with open(out, "w") as f:
            for row in pq.read_table(data).to_pylist():
                box = json.loads(row["reward_model"]["ground_truth"])["bbox_2d"]
                answer = json.dumps([{"bbox_2d": [v * scale for v in box], "label": "dog"}])
                f.write(json.dumps({"index": row["extra_info"]["index"], "response": answer}) + "\n")

    return generate


def test_answers_in_another_frame_stop_the_run_and_say_the_fix(tmp_path, monkeypatch):
    split = grounding_split(tmp_path / "refcoco" / "val.parquet")
    lines = []
    monkeypatch.setattr(zs, "generate", fake_generate(10))  # 0-1000 answers, a pixel split
    problems = zs.zero_shot(str(tmp_path), [split], 10, tmp_path / "preflight", 64, log=lines.append)
    assert len(problems) == 1 and problems[0].startswith("refcoco/val: frame: the answers look like relative 0-1000")
    assert "--model-family qwen2_vl or qwen3_vl" in problems[0]
    assert lines == [
        "[recipe] zero-shot refcoco/val (grounding, 10 rows): Acc@0.5 0.0, Acc@0.75 0.0, Acc@0.95 0.0, "
        "mIoU 0.0; unparsable 0; frame: mismatch"
    ]
    monkeypatch.setattr(zs, "generate", fake_generate(1))  # the right frame: silent, scored afresh
    lines.clear()
    assert zs.zero_shot(str(tmp_path), [split], 10, tmp_path / "preflight", 64, log=lines.append) == []
    assert "mIoU 100.0" in lines[0] and lines[0].endswith("frame: ok")


def test_the_base_model_really_generates_and_is_scored(tiny_qwen2_5_vl, tmp_path):
    """The path the recipes run, with transformers (this venv has no vLLM; the CPU training
    run goes through vLLM): a random model writes no boxes, so no frame is judged."""
    split = grounding_split(tmp_path / "refcoco" / "val.parquet", "qwen2_vl", 10)  # 112x112 input, 0-1000
    lines = []
    assert zs.zero_shot(str(tiny_qwen2_5_vl), [split], 2, tmp_path / "pre", 8, log=lines.append) == []
    metrics = json.loads((tmp_path / "pre" / "refcoco" / "metrics.json").read_text())
    assert metrics["n_samples"] == 2 and metrics["frame_diagnosis"]["status"] == "too few boxes"
    assert len((tmp_path / "pre" / "refcoco" / "responses.jsonl").read_text().splitlines()) == 2
    assert lines[0].startswith("[recipe] zero-shot refcoco/val (grounding, 2 rows): Acc@0.5 0.0")
