"""Page OCR converter on a real text image (Debian librust-tesseract-sys-dev) and its rules."""

from __future__ import annotations

import json
import shutil

from data_sources import oracle_input_size, prep, rows, tesseract_page
from PIL import Image

from perception_r1_verl.data.options import ConvertOptions
from perception_r1_verl.data.page_ocr import convert_page_ocr


def test_tesseract_page(tmp_path):
    img, text = tesseract_page()
    shutil.copy(img, tmp_path / "page.png")
    (tmp_path / "pages.jsonl").write_text(json.dumps({"image": "page.png", "text": text, "id": "rust-1"}) + "\n")
    out = tmp_path / "o.parquet"
    run = prep("page_ocr", "--jsonl", tmp_path / "pages.jsonl", "--out", out, "--model-family", "qwen2_vl")
    assert run.returncode == 0, run.stderr
    (r,) = rows(out)
    size = Image.open(img).size
    assert r["gt"] == {"text": text} and r["extra_info"]["source_id"] == "rust-1"
    assert r["extra_info"]["image_size"] == list(size)
    assert r["extra_info"]["input_size"] == list(oracle_input_size("qwen2_vl", size))
    assert r["prompt"][0]["content"] == "<image>OCR this image."
    assert r["images"][0]["bytes"] == img.read_bytes()  # PNG kept as it is


def test_rules(tmp_path):
    Image.new("RGB", (300, 200), "white").save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.new("RGB", (5000, 20), "white").save(tmp_path / "thin.png")
    lines = [
        json.dumps({"image": "a.png", "text": "Hello\nworld"}),
        json.dumps({"image": "a.png", "text": "again"}),  # duplicate_id (same image, no id)
        json.dumps({"image": "a.png", "text": " \n", "id": 3}),  # empty_text
        json.dumps({"image": "b.png", "text": "x"}),  # corrupt_image
        json.dumps({"image": "thin.png", "text": "x"}),  # bad_aspect_ratio
        json.dumps({"text": "no image"}),  # malformed_record
        "[1, 2]",  # malformed_record: not an object
        "{broken",  # malformed_record: not JSON
    ]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    s = convert_page_ocr(tmp_path / "p.jsonl", None, tmp_path / "o.parquet", ConvertOptions(progress=False))
    assert {k: v["count"] for k, v in s["rules"].items()} == {
        "duplicate_id": 1,
        "empty_text": 1,
        "corrupt_image": 1,
        "bad_aspect_ratio": 1,
        "malformed_record": 3,
    }
    (r,) = rows(tmp_path / "o.parquet")
    assert r["gt"] == {"text": "Hello\nworld"} and "frame" not in r["gt"]
    assert s["rules"]["malformed_record"]["examples"][0] == "p.jsonl line 6: not a jsonl record"
