"""The converters read the layouts peers publish, each on a small file built in that exact layout.

Sources of the layouts (record shapes and column types; the values are ours unless said):

- VLM-R1 REC json: om-ai-lab/VLM-R1 README @90052f478646 ("rec_jsons_processed", images
  relative to the COCO folder holding train2014/), read by src/eval/test_rec_r1.py
  (``problem``, ``solution``); the record below is verbatim from om-ai-lab/VLM-R1 issue #11.
  Its jsonl copies (issue #237) are read by src/open-r1-multimodal/src/open_r1/grpo_jsonl.py
  (``image``, ``conversations[0].value`` the question, ``[1].value`` the box as JSON text).
- lmms-lab RefCOCO parquet: the dataset card of lmms-lab/RefCOCO at hub commit e15256e
  (question_id string, image, question string, answer sequence of string, segmentation and
  bbox sequences of float32, iscrowd int8, file_name string; files data/{split}-NNNNN-of-NNNNN
  .parquet); bbox is xywh and answer holds every expression (EvolvingLMMs-Lab/lmms-eval
  lmms_eval/tasks/refcoco/utils_rec.py @75571cfe0fa3).
- EasyR1 tables: hiyouga/EasyR1 verl/utils/dataset.py @b44b311b669b (``images`` as a list of
  datasets Images or of paths under image_dir, ``problem`` with ``<image>``, ``answer``), as in
  hiyouga/geometry3k's card (images: sequence of image, problem, answer: string).
- Fox page OCR (the paper's PageOCR; PR1 evaluates on en/cn_page_ocr): ucaslcl/Fox README
  @82f720ce7a00 (focus_benchmark_test/en_page_ocr.json with en_pdf_png/), read by
  linkangheng/PR1 eval/evaluate_ocr.py @48d5558ee3f9 (image, conversations[1].value, prompt
  "<image>\\nOCR this image: ").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_sources import (
    coins_with_points,
    expected_box,
    opts,
    oracle_input_size,
    prep,
    rows,
    tesseract_page,
    voc_as_coco,
)
from PIL import Image

from perception_r1_verl.data.page_ocr import convert_page_ocr
from perception_r1_verl.data.pixmo_count import convert_pixmo_count
from perception_r1_verl.data.refcoco import convert_refcoco
from perception_r1_verl.data.rules import DataError

HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets' Image feature in parquet

# om-ai-lab/VLM-R1 issue #11 (2025-02-20), one record of rec_jsons_processed, verbatim.
VLM_R1_RECORD = {
    "height": 640,
    "width": 427,
    "id": 0,
    "original_id": 1719310,
    "dataset_name": "refcoco",
    "area": 14863.615599999997,
    "iscrowd": 0,
    "image_id": 0,
    "category_id": 1,
    "bbox_list": [[103.93, 299.99, 237.15, 476.40999999999997]],
    "text_type": "caption",
    "image": "train2014/COCO_train2014_000000581857.jpg",
    "problem": "Please provide the bounding box coordinate of the region this sentence describes: the lady with the blue shirt.",
    "normal_caption": "the lady with the blue shirt",
    "solution": [103.93, 299.99, 238.15, 477.41],
    "normalized_solution": [243, 468, 557, 745],
}


def frame_of(family: str, size) -> tuple[int, int]:
    return oracle_input_size(family, size) if family == "qwen2_5_vl" else (1000, 1000)


# --- VLM-R1 -----------------------------------------------------------------------------


@pytest.fixture
def coco_root(tmp_path):
    """A COCO folder with train2014/ holding the image of the VLM-R1 record (its size, 427x640)."""
    root = tmp_path / "coco"
    (root / "train2014").mkdir(parents=True)
    Image.new("RGB", (427, 640), (90, 120, 200)).save(root / VLM_R1_RECORD["image"], quality=90)
    return root


def test_vlm_r1_json_detected_and_read(tmp_path, coco_root):
    other = VLM_R1_RECORD | {"id": 1, "normal_caption": "man", "bbox_list": None, "solution": [10, 20, 110, 220]}
    ann = tmp_path / "rec_jsons_processed" / "refcocop_val.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps([VLM_R1_RECORD, other, VLM_R1_RECORD | {"normal_caption": None}], indent=4))
    run = prep("refcoco", "--table", ann, "--images", coco_root, "--out", tmp_path / "o.parquet")
    assert run.returncode == 0, run.stderr
    got = {r["prompt"][0]["content"].split(" in the image")[0]: r for r in rows(tmp_path / "o.parquet")}
    assert len(got) == 2 and "malformed_record: 1" in run.stderr  # the record without its expression
    lady = got["<image>Output the bounding box of the the lady with the blue shirt"]
    frame = frame_of("qwen2_5_vl", (427, 640))
    # the COCO box (bbox_list), not VLM-R1's solution with 1 added to x2 and y2
    assert lady["gt"]["bbox_2d"] == expected_box(VLM_R1_RECORD["bbox_list"][0], (427, 640), frame)
    man = got["<image>Output the bounding box of the man"]
    assert man["gt"]["bbox_2d"] == expected_box([10, 20, 110, 220], (427, 640), frame)  # solution when no bbox_list
    # from the published file name: refcocop -> refcoco+, _val -> val
    assert {r["data_source"] for r in got.values()} == {"refcoco+"}
    assert {r["extra_info"]["split"] for r in got.values()} == {"val"}
    assert lady["extra_info"]["source_id"] == f"{VLM_R1_RECORD['image']}:the lady with the blue shirt"


def test_vlm_r1_records_one_per_line_with_python_api(tmp_path, coco_root):
    """The same records one per line (.jsonl) convert the same."""
    path = tmp_path / "refcoco_train.jsonl"
    path.write_text(json.dumps(VLM_R1_RECORD) + "\n")
    s = convert_refcoco(tmp_path / "o.parquet", opts(model_family="qwen2_vl"), jsonl=path, images=coco_root)
    (r,) = rows(tmp_path / "o.parquet")
    assert s["rules"] == {} and r["gt"]["frame"] == [1000, 1000]
    assert r["gt"]["bbox_2d"] == expected_box(VLM_R1_RECORD["bbox_list"][0], (427, 640), (1000, 1000))


def test_vlm_r1_conversation_jsonl(tmp_path, coco_root):
    """VLM-R1's jsonl copies (issue #237) as grpo_jsonl.py reads them: conversations[0] the
    question (``<image>`` and the REC question of the record above), conversations[1] the box."""
    b = VLM_R1_RECORD["solution"]
    recs = [
        {
            "id": 1,
            "image": VLM_R1_RECORD["image"],
            "conversations": [
                {"from": "human", "value": "<image>" + VLM_R1_RECORD["problem"]},
                {"from": "gpt", "value": json.dumps(b)},
            ],
        },
        {
            "id": 2,
            "image": VLM_R1_RECORD["image"],
            "conversations": [
                {"from": "human", "value": "<image>What is this?"},
                {"from": "gpt", "value": json.dumps(b)},
            ],
        },  # no expression
    ]
    path = tmp_path / "refcocog_train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    s = convert_refcoco(tmp_path / "o.parquet", opts(), jsonl=path, images=coco_root, dataset="refcocog")
    (r,) = rows(tmp_path / "o.parquet")
    assert r["prompt"][0]["content"].startswith("<image>Output the bounding box of the the lady with the blue shirt in")
    assert r["gt"]["bbox_2d"] == expected_box(b, (427, 640), frame_of("qwen2_5_vl", (427, 640)))
    assert s["rules"]["malformed_record"]["count"] == 1


# --- lmms-lab ---------------------------------------------------------------------------


def _lmms_table(root: Path, split: str, boxes, image: bytes, first_id: int = 1000) -> Path:
    schema = pa.schema(
        [
            ("question_id", pa.string()),
            ("image", HF_IMAGE),
            ("question", pa.string()),
            ("answer", pa.list_(pa.string())),
            ("segmentation", pa.list_(pa.float32())),
            ("bbox", pa.list_(pa.float32())),
            ("iscrowd", pa.int8()),
            ("file_name", pa.string()),
        ]
    )
    recs = [
        {
            "question_id": str(first_id + i),
            "image": {"bytes": image, "path": None},
            "question": "",
            "answer": [f"the {n}", f"{n} number {i}"],
            "segmentation": [b[0], b[1], b[2], b[1], b[2], b[3]],
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "iscrowd": 0,
            "file_name": f"COCO_train2014_{i:012d}.jpg",
        }
        for i, (b, n) in enumerate(boxes)
    ]
    recs.append(recs[0] | {"question_id": "bad", "answer": None})  # a null cell: malformed
    path = root / "data" / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(recs, schema=schema), path, row_group_size=2)  # several groups
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_lmms_lab_parquet_embedded_images(tmp_path, workers):
    ann, voc_dir, boxes = voc_as_coco(tmp_path / "voc")
    boxes = boxes[:4]
    image = (voc_dir / "voc.jpg").read_bytes()
    table = _lmms_table(tmp_path / "RefCOCOplus", "testA", boxes, image)
    out = tmp_path / "o.parquet"
    run = prep("refcoco", "--table", table, "--out", out, "--model-family", "qwen3_vl", "--workers", workers)
    assert run.returncode == 0, run.stderr
    got = {r["extra_info"]["source_id"]: r for r in rows(out)}
    assert len(got) == 2 * len(boxes) and "malformed_record: 1" in run.stderr
    frame = (1000, 1000)
    for i, (b, _n) in enumerate(boxes):
        for k in range(2):
            r = got[f"{1000 + i}/{k}"]
            assert r["gt"]["bbox_2d"] == expected_box(b, (500, 375), frame)  # xywh read back as xyxy
            assert r["images"][0]["bytes"] == image
            assert r["data_source"] == "refcoco+" and r["extra_info"]["split"] == "testA"
    assert "the " + boxes[0][1] in got["1000/0"]["prompt"][0]["content"]


@pytest.mark.parametrize(
    ("repo", "split", "dataset"),
    [
        ("RefCOCO", "val", "refcoco"),
        ("RefCOCO", "test", "refcoco"),
        ("RefCOCO", "testB", "refcoco"),
        ("RefCOCOplus", "val", "refcoco+"),
        ("RefCOCOg", "val", "refcocog"),
        ("RefCOCOg", "test", "refcocog"),
    ],
)
def test_lmms_lab_dataset_and_split_from_the_hub_path(tmp_path, repo, split, dataset):
    coins, _ = coins_with_points(tmp_path / "coins")
    table = _lmms_table(tmp_path / "hub" / repo, split, [([5, 5, 100, 80], "coin")], coins.read_bytes())
    run = prep("refcoco", "--table", table, "--out", tmp_path / "o.parquet")
    assert run.returncode == 0, run.stderr
    got = rows(tmp_path / "o.parquet")
    assert len(got) == 2 and {(r["data_source"], r["extra_info"]["split"]) for r in got} == {(dataset, split)}


def test_lmms_lab_shards_limit_random_order(tmp_path):
    """Two shards of one split visited in random order (--limit): each row keeps its own image."""
    _, voc_dir, boxes = voc_as_coco(tmp_path / "voc")
    coins, _ = coins_with_points(tmp_path / "coins")
    voc = (voc_dir / "voc.jpg").read_bytes()
    a = _lmms_table(tmp_path / "a" / "RefCOCO", "val", boxes[:3], voc)
    b = _lmms_table(tmp_path / "b" / "RefCOCO", "val", [([5, 5, 100, 80], "coin")], coins.read_bytes(), first_id=2000)
    s = convert_refcoco(tmp_path / "o.parquet", opts(split="val", limit=5, seed=3), jsonl=[a, b])
    got = rows(tmp_path / "o.parquet")
    assert s["rows"] == len(got) == 5 and s["records"] == 8 and s["rules"]["malformed_record"]["count"] == 2
    for r in got:
        want = coins.read_bytes() if r["extra_info"]["source_id"].startswith("2000/") else voc
        assert r["images"][0]["bytes"] == want, r["extra_info"]["source_id"]


# --- EasyR1 -----------------------------------------------------------------------------


def _easyr1_parquet(path: Path, recs: list[dict]) -> Path:
    schema = pa.schema([("images", pa.list_(HF_IMAGE)), ("problem", pa.string()), ("answer", pa.string())])
    pq.write_table(pa.Table.from_pylist(recs, schema=schema), path)
    return path


def test_easyr1_grounding_parquet(tmp_path):
    _, voc_dir, boxes = voc_as_coco(tmp_path / "voc")
    img = {"bytes": (voc_dir / "voc.jpg").read_bytes(), "path": "voc.jpg"}
    (b0, n0), (b1, n1) = boxes[:2]
    table = _easyr1_parquet(
        tmp_path / "train.parquet",
        [
            {"images": [img], "problem": f"<image>the {n0}", "answer": json.dumps(b0)},
            {"images": [img], "problem": f"<image>a {n1}", "answer": f"<answer>{json.dumps(b1)}</answer>"},
            {"images": [img, img], "problem": "<image><image>two", "answer": json.dumps(b0)},  # one image per row
            {"images": [img], "problem": "<image>not a box", "answer": "7"},
        ],
    )
    s = convert_refcoco(tmp_path / "o.parquet", opts(), jsonl=table)
    got = {r["prompt"][0]["content"]: r["gt"] for r in rows(tmp_path / "o.parquet")}
    frame = frame_of("qwen2_5_vl", (500, 375))
    assert got[f"<image>Output the bounding box of the the {n0} in the image. Output in JSON format."]["bbox_2d"] == (
        expected_box(b0, (500, 375), frame)
    )
    assert any(g["bbox_2d"] == expected_box(b1, (500, 375), frame) for g in got.values())
    assert s["rows"] == 2 and s["rules"]["malformed_record"]["count"] == 2
    assert any("holds 2 images" in e for e in s["rules"]["malformed_record"]["examples"])


def test_easyr1_counting_parquet_and_jsonl_paths(tmp_path):
    coins, points = coins_with_points(tmp_path / "img")
    table = _easyr1_parquet(
        tmp_path / "clevr.parquet",
        [
            {
                "images": [{"bytes": coins.read_bytes(), "path": None}],
                "problem": "<image>How many coins are there in the image?",
                "answer": f"<answer> {len(points)} </answer>",
            },
            {
                "images": [{"bytes": coins.read_bytes(), "path": None}],
                "problem": "<image>What is shown?",
                "answer": "3",
            },
        ],
    )
    s = convert_pixmo_count(table, None, tmp_path / "o.parquet", opts(model_family="qwen2_vl"))
    (r,) = rows(tmp_path / "o.parquet")
    assert r["gt"] == {"count": len(points), "points": [], "frame": [1000, 1000]}
    assert r["prompt"][0]["content"].startswith("<image>Output all the bounding boxes of the coins")
    assert {k: v["count"] for k, v in s["rules"].items()} == {"malformed_record": 1, "count_without_points": 1}
    # EasyR1's other form: image paths under its image_dir
    jl = tmp_path / "img" / "t.jsonl"
    jl.write_text(
        json.dumps({"images": ["coins.png"], "problem": "How many items are there in the image?", "answer": "24"})
        + "\n"
    )
    convert_pixmo_count(jl, None, tmp_path / "j.parquet", opts())
    (r,) = rows(tmp_path / "j.parquet")
    assert r["gt"]["count"] == 24 and "the items" in r["prompt"][0]["content"]


def test_easyr1_ocr_parquet(tmp_path):
    page, text = tesseract_page()
    table = _easyr1_parquet(
        tmp_path / "ocr.parquet",
        [
            {
                "images": [{"bytes": page.read_bytes(), "path": "page.png"}],
                "problem": "<image>Read the text.",
                "answer": text,
            }
        ],
    )
    s = convert_page_ocr(table, None, tmp_path / "o.parquet", opts())
    (r,) = rows(tmp_path / "o.parquet")
    assert s["rules"] == {} and r["gt"] == {"text": text} and r["images"][0]["bytes"] == page.read_bytes()
    assert r["extra_info"]["source_id"] == "ocr.parquet row 0"


# --- Fox page OCR -----------------------------------------------------------------------


def test_fox_page_ocr_benchmark_folder(tmp_path):
    page, text = tesseract_page()
    bench = tmp_path / "focus_benchmark_test"
    (bench / "en_pdf_png").mkdir(parents=True)
    shutil.copy(page, bench / "en_pdf_png" / "en_1.png")
    human = {"from": "human", "value": "<image>\nOCR this image: "}
    (bench / "en_page_ocr.json").write_text(
        json.dumps(
            [
                {
                    "image": "en_1.png",
                    "len": len(text.split()),
                    "conversations": [human, {"from": "gpt", "value": text}],
                },
                {"image": "en_2.png", "len": 1, "conversations": [human]},  # no answer: malformed
            ],
            ensure_ascii=False,
            indent=1,
        )
    )
    out = tmp_path / "o.parquet"
    run = prep("page_ocr", "--table", bench / "en_page_ocr.json", "--out", out, "--split", "test")
    assert run.returncode == 0, run.stderr
    (r,) = rows(out)
    assert r["gt"] == {"text": text} and r["extra_info"]["source_id"] == "en_1.png"
    assert r["images"][0]["bytes"] == page.read_bytes()  # found in en_pdf_png/ without --images
    assert "malformed_record: 1" in run.stderr


# --- no known layout --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "accepted"),
    [
        ("refcoco", ["lmms_lab", "vlm_r1", "vlm_r1_jsonl", "easyr1", "jsonl"]),
        ("page_ocr", ["fox", "easyr1", "jsonl"]),
        ("pixmo_count", ["easyr1", "pixmo"]),
    ],
)
def test_unknown_layout_is_an_error(tmp_path, source, accepted):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"picture": "a.png", "caption": "hello"}) + "\n")
    run = prep(source, "--table", path, "--out", tmp_path / "o.parquet")
    assert run.returncode == 2 and not (tmp_path / "o.parquet").exists()
    assert "no layout this converter reads" in run.stderr and "caption, picture" in run.stderr
    for name in accepted:
        assert f"{name} (" in run.stderr
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    run = prep(source, "--table", empty, "--out", tmp_path / "o.parquet")
    assert run.returncode == 2 and "holds no record" in run.stderr


def test_forced_layout_counts_other_records_and_strict_stops(tmp_path, coco_root):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([VLM_R1_RECORD, {"image": "a.jpg", "expression": "x", "bbox": [1, 2, 3, 4]}]))
    s = convert_refcoco(tmp_path / "o.parquet", opts(), jsonl=path, images=coco_root, layout="jsonl")
    assert s["rows"] == 0 and s["rules"]["malformed_record"]["examples"] == ["r.json item 0: not a jsonl record"]
    assert s["rules"]["missing_image"]["count"] == 1  # the one jsonl record was read
    with pytest.raises(DataError, match="malformed_record at r.json item 0"):
        convert_refcoco(tmp_path / "o.parquet", opts(strict=True), jsonl=path, images=coco_root, layout="jsonl")
    path.write_text(json.dumps([VLM_R1_RECORD]))
    with pytest.raises(DataError, match=r"none of the 1 records of .*r.json reads as jsonl \(image"):
        convert_refcoco(tmp_path / "o.parquet", opts(), jsonl=path, images=coco_root, layout="jsonl")
    run = prep("refcoco", "--table", path, "--images", coco_root, "--layout", "vlm_r1", "--out", tmp_path / "v.parquet")
    assert run.returncode == 0 and len(rows(tmp_path / "v.parquet")) == 1
