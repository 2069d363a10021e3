"""RefCOCO converter: refer-toolkit pickles (safely), the jsonl export, splits, frames, bad input."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from data_sources import expected_box, labelme_coco, opts, oracle_input_size, prep, rows, voc_as_coco

from perception_r1_verl.data.refcoco import convert_refcoco
from perception_r1_verl.data.refer import safe_load_pickle
from perception_r1_verl.data.rules import DataError


def _refs_from_labelme(folder: Path) -> tuple[Path, Path, dict]:
    """A refs(unc).p over labelme's COCO file: one ref per annotation, two sentences each."""
    ann = labelme_coco()
    coco = json.loads(ann.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    refs = [
        {
            "ref_id": 100 + a["id"],
            "ann_id": a["id"],
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "split": "train" if a["id"] % 3 else "val",
            "file_name": f"COCO_train2014_{a['image_id']:012d}_{a['id']}.jpg",
            "sentences": [
                {"sent_id": 2 * a["id"], "sent": f"the {names[a['category_id']]}", "raw": "x", "tokens": []},
                {"sent_id": 2 * a["id"] + 1, "sent": f"{names[a['category_id']]} number {a['id']}", "tokens": []},
            ],
        }
        for a in coco["annotations"]
    ]
    folder = folder / "refcoco+"
    folder.mkdir(parents=True)
    path = folder / "refs(unc).p"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    return path, ann, coco


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_5"])
def test_refer_pickle_every_family(tmp_path, family):
    refs, ann, coco = _refs_from_labelme(tmp_path)
    summary = convert_refcoco(
        tmp_path / "o.parquet",
        opts(model_family=family),
        refs=refs,
        instances=ann,
        images=ann.parent,
        dataset="refcoco+",
    )
    out = rows(tmp_path / "o.parquet")
    train = [a for a in coco["annotations"] if a["id"] % 3]
    assert summary["rows"] == len(out) == 2 * len(train) and summary["rules"] == {}
    images = {i["id"]: i for i in coco["images"]}
    for r in out:
        ref_id, sent_id = map(int, r["extra_info"]["source_id"].split("/"))
        a = next(a for a in coco["annotations"] if a["id"] == ref_id - 100)
        size = (images[a["image_id"]]["width"], images[a["image_id"]]["height"])
        inp = oracle_input_size(family, size)
        frame = inp if family == "qwen2_5_vl" else (1000, 1000)
        x, y, w, h = a["bbox"]
        assert r["gt"] == {"bbox_2d": expected_box([x, y, x + w, y + h], size, frame), "frame": list(frame)}
        assert r["data_source"] == "refcoco+" and r["extra_info"]["task"] == "grounding"
        assert r["prompt"][0]["content"].startswith("<image>Output the bounding box of the ")
        assert ("JSON" in r["prompt"][0]["content"]) == (family != "qwen2_vl")


def test_refer_split_filter_and_cli(tmp_path):
    refs, ann, coco = _refs_from_labelme(tmp_path)
    out = tmp_path / "val.parquet"
    run = prep("refcoco", "--refs", refs, "--instances", ann, "--images", ann.parent, "--split", "val", "--out", out)
    assert run.returncode == 0, run.stderr
    got = rows(out)
    assert len(got) == 2 * sum(1 for a in coco["annotations"] if a["id"] % 3 == 0)
    assert {r["data_source"] for r in got} == {"refcoco+"}  # from the folder name
    assert {r["extra_info"]["split"] for r in got} == {"val"}


def test_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "refcoco" / "refs(unc).p"
    bad.parent.mkdir()
    bad.write_bytes(pickle.dumps([{"ref_id": 1, "x": Evil()}], protocol=2))
    with pytest.raises(DataError, match="only plain data"):
        convert_refcoco(tmp_path / "o.parquet", opts(), refs=bad, instances=labelme_coco(), images=tmp_path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        safe_load_pickle(bad)


def test_jsonl_export_formats_and_rules(tmp_path):
    ann, images, boxes = voc_as_coco(tmp_path / "voc")
    (b0, n0), (b1, n1) = boxes[0], boxes[1]
    lines = [
        {"image": "voc.jpg", "expression": f"the {n0}", "bbox": b0, "id": "a"},
        {"image": "voc.jpg", "expression": f"a {n1}", "bbox": [b1[0], b1[1], b1[2] - b1[0], b1[3] - b1[1]], "id": "b"},
        {"image": "voc.jpg", "expression": "  ", "bbox": b0},  # empty_text
        {"image": "voc.jpg", "expression": "dup", "bbox": b0, "id": "a"},  # duplicate_id
        {"image": "voc.jpg", "expression": "flat", "bbox": [10, 10, 10, 50]},  # box_zero_area -> skip
        {"image": "voc.jpg", "expression": "wide", "bbox": [-5, 10, 600, 50]},  # box_outside_image -> clip
        {"image": "voc.jpg", "expression": "other split", "bbox": b0, "split": "testA"},  # filtered out
        {"image": "nope.jpg", "expression": "gone", "bbox": b0},  # missing_image
        {"expression": "no image", "bbox": b0},  # malformed_record
    ]
    path = tmp_path / "refs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    # line "b" is xywh: read as xyxy it still passes as a box; --bbox-format xywh reads it right
    s = convert_refcoco(tmp_path / "o.parquet", opts(), jsonl=path, images=images)
    got = {r["prompt"][0]["content"]: r["gt"] for r in rows(tmp_path / "o.parquet")}
    frame = tuple(next(iter(got.values()))["frame"])
    assert got[f"<image>Output the bounding box of the the {n0} in the image. Output in JSON format."]["bbox_2d"] == (
        expected_box(b0, (500, 375), frame)
    )
    wide = next(g for t, g in got.items() if "wide" in t)
    assert wide["bbox_2d"][0] == 0 and wide["bbox_2d"][2] == frame[0]
    counts = {k: v["count"] for k, v in s["rules"].items()}
    assert counts == {
        "empty_text": 1,
        "duplicate_id": 1,
        "box_zero_area": 1,
        "box_outside_image": 1,
        "missing_image": 1,
        "malformed_record": 2,
    }
    assert s["rows"] == 3
    s2 = convert_refcoco(tmp_path / "w.parquet", opts(), jsonl=path, images=images, bbox_format="xywh")
    got2 = {r["extra_info"]["source_id"]: r["gt"] for r in rows(tmp_path / "w.parquet")}
    assert got2["b"]["bbox_2d"] == expected_box(b1, (500, 375), frame)
    assert s2["rows"] >= 2
