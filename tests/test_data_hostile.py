"""Hostile or broken dataset files: images stay inside their root, ids never merge rows,
outputs never clobber inputs, an empty result fails, and every bad file is one clear
error or a counted skip (issue 18)."""

from __future__ import annotations

import io
import json
import pickle
import struct
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_sources import opts, prep, rows
from PIL import Image

from perception_r1_verl.data.coco_det import convert_coco
from perception_r1_verl.data.layouts import cell_image_bytes
from perception_r1_verl.data.page_ocr import convert_page_ocr
from perception_r1_verl.data.pixmo_count import convert_pixmo_count
from perception_r1_verl.data.refcoco import convert_refcoco
from perception_r1_verl.data.rules import DataError, OutsideRootError
from perception_r1_verl.data.sample import make_sample_sources
from perception_r1_verl.data.tables import under_root


@pytest.fixture
def sample(tmp_path):
    """The offline sample, and a 'secret' image beside (not inside) its image folder."""
    s = make_sample_sources(tmp_path / "s", n_images=3)
    secret = tmp_path / "s" / "secret" / "outside.png"
    secret.parent.mkdir()
    Image.new("RGB", (64, 48), (7, 7, 7)).save(secret)
    return s, secret


def _escapes(secret: Path, images: Path) -> list[str]:
    """Names that reach ``secret`` from ``images``: climbing out, absolute, climbing via a subfolder."""
    return [f"../{secret.parent.name}/{secret.name}", str(secret), f"x/../../{secret.parent.name}/{secret.name}"]


def _add_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def _convert_table(kind: str, s, tmp_path: Path) -> dict:
    out = tmp_path / f"{kind}.parquet"
    if kind == "refcoco":
        return convert_refcoco(out, opts(), jsonl=s.grounding, images=s.images)
    if kind == "pixmo_count":
        return convert_pixmo_count(s.counting, s.images, out, opts())
    return convert_page_ocr(s.ocr, s.images, out, opts())


@pytest.mark.parametrize("kind", ["refcoco", "pixmo_count", "page_ocr"])
def test_table_paths_outside_the_image_root_are_counted_never_rows(sample, tmp_path, kind):
    s, secret = sample
    table = {"refcoco": s.grounding, "pixmo_count": s.counting, "page_ocr": s.ocr}[kind]
    first = json.loads(table.read_text().splitlines()[0])
    before = _convert_table(kind, s, tmp_path)["rows"]
    text_key = {"refcoco": "expression", "pixmo_count": "label", "page_ocr": "text"}[kind]
    _add_jsonl(table, [first | {"image": name, text_key: f"x{k}"} for k, name in enumerate(_escapes(secret, s.images))])
    summary = _convert_table(kind, s, tmp_path)
    assert summary["rows"] == before and summary["rules"]["image_outside_root"]["count"] == 3
    stored = [r["images"][0]["bytes"] for r in rows(tmp_path / f"{kind}.parquet")]
    assert secret.read_bytes() not in stored


def test_coco_file_names_outside_the_root_are_counted(sample, tmp_path):
    s, secret = sample
    coco = json.loads(s.annotations.read_text())
    ann = coco["annotations"][0]
    for k, name in enumerate(_escapes(secret, s.images)):
        coco["images"].append({"id": 900 + k, "file_name": name, "width": 64, "height": 48})
        coco["annotations"].append(ann | {"id": 9000 + k, "image_id": 900 + k, "bbox": [1, 1, 20, 20]})
    s.annotations.write_text(json.dumps(coco))
    summary = convert_coco(s.annotations, s.images, tmp_path / "o.parquet", opts())
    assert summary["rules"]["image_outside_root"]["count"] == 3 and summary["rows"] == 3


def test_refer_file_name_outside_the_root_is_counted(sample, tmp_path):
    s, secret = sample
    coco = json.loads(s.annotations.read_text())
    img, ann = coco["images"][0], coco["annotations"][0]
    img["file_name"] = f"../{secret.parent.name}/{secret.name}"
    refs = [{"ref_id": 1, "image_id": img["id"], "ann_id": ann["id"], "split": "train", "sentences": [{"sent_id": 1, "sent": "a"}]}]  # fmt: skip
    (tmp_path / "refs.p").write_bytes(pickle.dumps(refs, protocol=2))
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match="image_outside_root at ref id 1"):
        convert_refcoco(
            tmp_path / "o.parquet",
            opts(strict=True),
            refs=tmp_path / "refs.p",
            instances=tmp_path / "instances.json",
            images=s.images,
        )


def test_a_table_cell_path_outside_the_root_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(OutsideRootError):
        cell_image_bytes({"bytes": None, "path": "../x.png"}, tmp_path / "root")
    with pytest.raises(OutsideRootError):
        cell_image_bytes({"bytes": None, "path": str(tmp_path / "x.png")}, tmp_path / "root")


def test_names_are_judged_as_written_not_where_links_point(sample, tmp_path):
    """A root that is a link, and links placed inside it (a usual COCO layout), keep working."""
    s, _ = sample
    linked_root = tmp_path / "linked_images"
    linked_root.symlink_to(s.images)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    first = json.loads(s.grounding.read_text().splitlines()[0])
    (elsewhere / first["image"]).write_bytes((s.images / first["image"]).read_bytes())
    (s.images / "train2014").symlink_to(elsewhere)
    _add_jsonl(s.grounding, [first | {"image": f"train2014/{first['image']}", "expression": "via a link"}])
    summary = convert_refcoco(tmp_path / "o.parquet", opts(), jsonl=s.grounding, images=linked_root)
    assert summary["rules"] == {} and summary["rows"] == len(s.grounding.read_text().splitlines())
    assert under_root(Path("/d"), "a\x00.jpg") is None  # a NUL never reaches open()


def test_a_repeated_coco_image_id_never_moves_boxes(tmp_path):
    s = make_sample_sources(tmp_path / "s", n_images=3)
    coco = json.loads(s.annotations.read_text())
    first = coco["images"][0]
    twin = first | {"file_name": coco["images"][1]["file_name"]}  # another picture, same id
    coco["images"].append(twin)
    coco["annotations"].append(coco["annotations"][0] | {"id": 77_777, "bbox": [3, 4, 5, 6]})
    s.annotations.write_text(json.dumps(coco))
    summary = convert_coco(s.annotations, s.images, tmp_path / "o.parquet", opts())
    got = rows(tmp_path / "o.parquet")
    assert str(first["id"]) not in {r["extra_info"]["source_id"] for r in got}
    assert summary["rules"]["duplicate_id"]["count"] == 2 and summary["rows"] == 2


# --- outputs never clobber inputs ----------------------------------------------------


def test_a_converter_refuses_to_write_over_its_input(sample, tmp_path):
    s, _ = sample
    before = s.annotations.read_bytes()
    run = prep("coco_det", "--annotations", s.annotations, "--images", s.images, "--out", s.annotations)
    assert run.returncode == 2 and "it is an input of this command" in run.stderr
    assert s.annotations.read_bytes() == before
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    run = prep("coco_det", "--annotations", s.annotations, "--images", s.images, "--out", other)
    assert run.returncode == 2 and "is not a parquet file" in run.stderr and other.read_text() == "mine"


def _eval(*args) -> tuple[int, str]:
    from perception_r1_verl.eval.cli import main

    err = io.StringIO()
    old, sys.stderr = sys.stderr, err
    try:
        return main([str(a) for a in args]), err.getvalue()
    finally:
        sys.stderr = old


def test_eval_commands_refuse_to_write_over_inputs(tmp_path):
    split = tmp_path / "split.parquet"
    pq.write_table(pa.table({"a": [1]}), split)
    before = split.read_bytes()
    # generate: --out swapped with --data, or any existing file that is not its own responses
    assert _eval("generate", "--model", tmp_path, "--data", split, "--out", split)[0] == 2
    code, err = _eval("generate", "--model", tmp_path, "--data", tmp_path / "x", "--out", split)
    assert code == 2 and "not a responses file" in err
    assert split.read_bytes() == before
    assert _eval("score", "--data", split, "--responses", tmp_path / "r.jsonl", "--out", split)[0] == 2
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    code, err = _eval("score", "--data", split, "--responses", tmp_path / "r.jsonl", "--out", notes)
    assert code == 2 and "not a folder" in err and notes.read_text() == "mine"
    code, err = _eval("rollouts", tmp_path, "--data", split, "--out", split)
    assert code == 2 and "input of this command" in err and split.read_bytes() == before


def test_generate_appends_to_its_own_responses_file(tmp_path):
    from perception_r1_verl.outputs import check_output

    own = tmp_path / "r.jsonl"
    own.write_bytes(b'{"index":"0","response":"x"}\n{"ind')  # cut off by a kill
    check_output(own, [tmp_path / "split.parquet"], "responses")
    (tmp_path / "empty.jsonl").touch()
    check_output(tmp_path / "empty.jsonl", [], "responses")


# --- an empty result is an error ------------------------------------------------------


def test_a_conversion_without_rows_fails_and_leaves_no_parquet(sample, tmp_path):
    s, _ = sample
    for image in s.images.iterdir():
        image.unlink()
    out = tmp_path / "o.parquet"
    run = prep("coco_det", "--annotations", s.annotations, "--images", s.images, "--out", out)
    assert run.returncode == 2 and "wrote 0 rows" in run.stderr and "missing_image: 3" in run.stderr
    assert "no row was written" in run.stderr and not out.exists()
    assert json.loads(out.with_suffix(".summary.json").read_text())["rows"] == 0


# --- each broken input: one clear error or a counted skip ---------------------------------


def _refer(tmp_path: Path, refs_bytes: bytes, coco: dict | None = None, strict: bool = False) -> dict:
    (tmp_path / "refs.p").write_bytes(refs_bytes)
    images = [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}]
    annotations = [{"id": 5, "image_id": 1, "bbox": [1, 1, 4, 4], "category_id": 1}]
    coco = coco or {"images": images, "annotations": annotations}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    return convert_refcoco(
        tmp_path / "o.parquet",
        opts(strict=strict),
        refs=tmp_path / "refs.p",
        instances=tmp_path / "instances.json",
        images=tmp_path,
    )


def _ref(**kw) -> dict:
    return {"ref_id": 1, "image_id": 1, "ann_id": 5, "split": "train", "sentences": [{"sent_id": 1, "sent": "a"}]} | kw


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x02}q\x00}q\x01b.",  # BUILD on a dict: the plain unpickler has no __setstate__ for it
        b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"x",  # a byte string claiming 4 EiB
        b"\x80\x02.",  # no object at all
    ],
    ids=["build", "huge_bytes", "empty"],
)
def test_hostile_refer_pickles_are_one_clear_error(tmp_path, payload):
    with pytest.raises(DataError, match="cannot read refs"):
        _refer(tmp_path, payload)


def test_malformed_refs_are_counted_skips(tmp_path):
    refs = [
        _ref(ref_id=[1]),  # list-valued ids
        _ref(ref_id=2, image_id={"id": 1}),
        _ref(ref_id=3, sentences=5),
        _ref(ref_id=4, sentences=[{"sent_id": [4], "sent": "b"}]),
        _ref(ref_id=7, sentences=[{"sent_id": 7, "sent": "kept"}]),
    ]
    # One more ref: lists nested 100,000 deep (deeper than any recursion limit), written
    # with opcodes because pickle.dumps itself would recurse: EMPTY_LIST x n, APPEND x n.
    depth = 100_000
    payload = pickle.dumps(refs, protocol=2)[:-1] + b"]" * depth + b"a" * depth + b"."
    summary = _refer(tmp_path, payload)
    assert summary["rows"] == 1 and summary["rules"]["malformed_record"]["count"] == 5


def test_refer_instances_without_file_name_are_counted(tmp_path):
    coco = {"images": [{"id": 1, "width": 8, "height": 8}], "annotations": [{"id": 5, "image_id": 1, "bbox": [1, 1, 4, 4]}]}  # fmt: skip
    summary = _refer(tmp_path, pickle.dumps([_ref()], protocol=2), coco)
    assert summary["rules"]["malformed_record"]["count"] == 1


def test_coco_ids_that_are_lists_or_dicts_are_counted(tmp_path):
    s = make_sample_sources(tmp_path / "s", n_images=2)
    coco = json.loads(s.annotations.read_text())
    ann = coco["annotations"][0]
    coco["images"].append({"id": [1], "file_name": "x.jpg", "width": 8, "height": 8})
    coco["annotations"] += [ann | {"id": [1]}, ann | {"id": 501, "image_id": {"a": 1}}, ann | {"id": 502, "category_id": [1]}]  # fmt: skip
    coco["categories"].append({"id": {"x": 1}, "name": "odd"})
    s.annotations.write_text(json.dumps(coco))
    summary = convert_coco(s.annotations, s.images, tmp_path / "o.parquet", opts())
    assert summary["rules"]["malformed_record"]["count"] == 5 and summary["rows"] == 2


def test_an_invalid_json_table_is_one_clear_error(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text('[{"image": "a.jpg",')
    run = prep("refcoco", "--table", bad, "--out", tmp_path / "o.parquet")
    assert run.returncode == 2 and "is not valid JSON" in run.stderr and "Traceback" not in run.stderr


def test_pixmo_with_a_missing_image_folder_is_one_clear_error(tmp_path):
    table = tmp_path / "t.jsonl"
    table.write_text(json.dumps({"image_sha256": "ab", "label": "cats", "count": 2}) + "\n")
    run = prep("pixmo_count", "--table", table, "--images", tmp_path / "nowhere", "--out", tmp_path / "o.parquet")
    assert run.returncode == 2 and "cannot list the image folder" in run.stderr and "Traceback" not in run.stderr


def test_ctrl_c_in_generate_says_how_to_resume(tmp_path, monkeypatch):
    import perception_r1_verl.eval.generate as gen

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "generate", interrupted)
    code, err = _eval("generate", "--model", tmp_path, "--data", tmp_path / "d.parquet", "--out", tmp_path / "r.jsonl")
    assert code == 130 and "rerun the same command to resume" in err
