"""Produced parquet read by verl's RLHFDataset with a local Qwen processor: sizes, tokens, rewards."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_sources import coins_with_points, labelme_coco, tesseract_page, voc_as_coco
from PIL import Image
from qwen_fixtures import QWEN3_VL_PREPROCESSOR, write_qwen2_5_vl_processor

from perception_r1_verl.data.check import inspect_parquet
from perception_r1_verl.data.coco_det import convert_coco
from perception_r1_verl.data.options import ConvertOptions
from perception_r1_verl.data.page_ocr import convert_page_ocr
from perception_r1_verl.data.pixmo_count import convert_pixmo_count
from perception_r1_verl.data.refcoco import convert_refcoco
from perception_r1_verl.data.rows import SCHEMA


def _all_sources(root: Path, family: str, **kw) -> list[Path]:
    """One parquet per source, all from real third-party images."""
    o = ConvertOptions(progress=False, model_family=family, **kw)
    voc, voc_dir, boxes = voc_as_coco(root / "voc")
    coins, points = coins_with_points(root / "coins")
    (root / "coins" / "t.jsonl").write_text(
        json.dumps({"image": "coins.png", "label": "coins", "count": len(points), "points": points}) + "\n"
    )
    (root / "refs.jsonl").write_text(
        "\n".join(json.dumps({"image": "voc.jpg", "expression": n, "bbox": b}) for b, n in boxes[:3]) + "\n"
    )
    outs = [root / f"{n}.parquet" for n in ("det", "ref", "count")]
    convert_coco(voc, voc_dir, outs[0], o)
    convert_refcoco(outs[1], o, jsonl=root / "refs.jsonl", images=voc_dir)
    convert_pixmo_count(root / "coins" / "t.jsonl", root / "coins", outs[2], o)
    return outs


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
@pytest.mark.parametrize("think", [False, True])
def test_every_source_passes_inspection(tmp_path, qwen2_5_vl_processor_dir, family, think):
    for parquet in _all_sources(tmp_path, family, think=think):
        report = inspect_parquet(parquet, qwen2_5_vl_processor_dir, n_draw=2, grid=tmp_path / "g.png")
        assert report.ok, report.problems
        assert report.checked == report.rows > 0


def test_labelme_and_page_through_the_cli(tmp_path, qwen2_5_vl_processor_dir):
    img, text = tesseract_page()
    shutil.copy(img, tmp_path / "page.png")
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": "page.png", "text": text}) + "\n")
    convert_page_ocr(tmp_path / "p.jsonl", None, tmp_path / "ocr.parquet", ConvertOptions(progress=False))
    convert_coco(labelme_coco(), None, tmp_path / "det.parquet", ConvertOptions(progress=False, image_store="resized"))
    for name in ("ocr", "det"):
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "perception_r1_verl.data.cli",
                "check",
                tmp_path / f"{name}.parquet",
                "--processor",
                qwen2_5_vl_processor_dir,
            ],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "0 problems" in run.stdout
        assert (tmp_path / f"{name}.grid.png").stat().st_size > 1000


def test_qwen3_vl_patch_16(tmp_path):
    """Qwen3-VL: verl resizes with factor 32 and the processor's 65536-pixel minimum holds."""
    folder = write_qwen2_5_vl_processor(tmp_path / "qwen3ish")
    (folder / "preprocessor_config.json").write_text(json.dumps(QWEN3_VL_PREPROCESSOR))
    small = tmp_path / "small"
    small.mkdir()
    Image.new("RGB", (120, 90), "white").save(small / "a.png")  # under the minimum: enlarged
    (small / "p.jsonl").write_text(json.dumps({"image": "a.png", "text": "blank"}) + "\n")
    convert_page_ocr(
        small / "p.jsonl", None, small / "o.parquet", ConvertOptions(progress=False, model_family="qwen3_vl")
    )
    for parquet in [*_all_sources(tmp_path, "qwen3_vl"), small / "o.parquet"]:
        report = inspect_parquet(parquet, folder, n_draw=0)
        assert report.ok, report.problems
    assert pq.read_table(small / "o.parquet").to_pylist()[0]["extra_info"]["input_size"] == [320, 224]


@pytest.mark.parametrize("think", [False, True])
def test_qwen3_5_rows_match_its_processor(tmp_path, tiny_qwen3_5, think):
    """Every source converted for Qwen3.5, checked with a Qwen3.5 folder's processor (patch 16,
    merge 2): verl's resize is the row's input_size, the image tokens fill its grid, and the
    ground truth written as the model answers (JSON, 0-1000) scores the maximum."""
    img, text = tesseract_page()
    shutil.copy(img, tmp_path / "page.png")
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": "page.png", "text": text}) + "\n")
    options = ConvertOptions(progress=False, model_family="qwen3_5", think=think)
    convert_page_ocr(tmp_path / "p.jsonl", None, tmp_path / "ocr.parquet", options)
    for parquet in [*_all_sources(tmp_path, "qwen3_5", think=think), tmp_path / "ocr.parquet"]:
        report = inspect_parquet(parquet, tiny_qwen3_5, n_draw=0)
        assert report.ok, report.problems
        assert report.checked == report.rows > 0


def test_inspection_catches_wrong_rows(tmp_path, qwen2_5_vl_processor_dir):
    det, ref, _ = _all_sources(tmp_path, "qwen2_5_vl")
    table = pq.read_table(det).to_pylist() + pq.read_table(ref).to_pylist()
    table[0]["extra_info"]["input_size"] = [10, 10]
    gt = orjson.loads(table[0]["reward_model"]["ground_truth"])
    gt["objects"][0]["bbox_2d"] = [50, 50, 10, 10]  # inverted
    table[0]["reward_model"]["ground_truth"] = orjson.dumps(gt).decode()
    table[1]["extra_info"]["task"] = "detection"  # a grounding row labelled detection
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(table, schema=SCHEMA), bad)
    report = inspect_parquet(bad, qwen2_5_vl_processor_dir, n_draw=0)
    text = "\n".join(report.problems)
    assert "row 0 (coco 7): verl feeds the image at (504, 364), extra_info says (10, 10)" in text
    assert "row 0 (coco 7): processor grid 36x26 patches of 14" in text
    assert "row 0 (coco 7): ground truth as an answer scores" in text or "row 0 (coco 7): bad detection" in text
    assert "row 1 (refcoco" in text and "does not fit task 'detection'" in text


def _modes_set(root: Path) -> Path:
    """A grounding table over images in modes verl's loader renders wrong, or cannot render."""
    root.mkdir()
    grey16 = np.full((120, 160), 32896, np.uint16)  # mid-grey in 16 bits: verl's loader shows white
    Image.fromarray(grey16).save(root / "grey16.png")
    la = Image.new("LA", (160, 120), (0, 0))  # transparent black: verl's loader shows black, not white
    la.paste((200, 255), (40, 30, 120, 90))
    la.save(root / "la.png")
    Image.fromarray(np.full((120, 160), 0.5, np.float32)).save(root / "float.tiff")  # no 8-bit range
    Image.new("RGB", (160, 120), (10, 200, 30)).save(root / "rgb.png")
    names = ("grey16.png", "la.png", "float.tiff", "rgb.png")
    lines = [json.dumps({"image": n, "expression": f"the {n}", "bbox": [40, 30, 120, 90]}) for n in names]
    (root / "t.jsonl").write_text("\n".join(lines) + "\n")
    return root / "t.jsonl"


def test_image_modes_are_stored_as_the_model_should_see_them(tmp_path, qwen2_5_vl_processor_dir):
    table = _modes_set(tmp_path / "m")
    out = tmp_path / "o.parquet"
    summary = convert_refcoco(out, ConvertOptions(progress=False), jsonl=table)
    assert summary["rows"] == 3 and summary["rules"]["unsupported_image_mode"]["count"] == 1
    assert summary["rules"]["image_converted"]["count"] == 2  # the RGB one is stored as it is
    stored = {r["source_id"]: r for r in pq.read_table(out).column("extra_info").to_pylist()}
    assert len(stored) == 3
    report = inspect_parquet(out, qwen2_5_vl_processor_dir, n_draw=0)
    assert report.ok, report.problems
    # What verl feeds the model, through its own RLHFDataset: grey, not white.
    from verl.utils.dataset.vision_utils import process_image

    row = next(r for r in pq.read_table(out).to_pylist() if r["extra_info"]["source_id"].startswith("grey16"))
    seen = process_image({"image": Image.open(io.BytesIO(row["images"][0]["bytes"]))})
    assert np.asarray(seen).mean() == pytest.approx(128, abs=1)


def test_inspection_catches_an_image_verl_renders_wrong(tmp_path, qwen2_5_vl_processor_dir):
    table = _modes_set(tmp_path / "m")
    out = tmp_path / "o.parquet"
    convert_refcoco(out, ConvertOptions(progress=False), jsonl=table)
    rows = pq.read_table(out).to_pylist()
    raw = (tmp_path / "m" / "grey16.png").read_bytes()  # as stored before the conversion existed
    for r in rows:
        if r["extra_info"]["source_id"].startswith("grey16"):
            r["images"][0]["bytes"] = raw
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out)
    report = inspect_parquet(out, qwen2_5_vl_processor_dir, n_draw=0)
    (problem,) = report.problems
    assert "grey16" in problem and "127/255 off its pixels" in problem
