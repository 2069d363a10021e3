"""PixMo-Count converter: parquet and jsonl tables, sha256 lookup, frames, counting rules."""

from __future__ import annotations

import hashlib
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_sources import coins_with_points, opts, oracle_input_size, prep, rows

from perception_r1_verl.data.pixmo_count import convert_pixmo_count


@pytest.fixture
def coins(tmp_path):
    """coins.png saved under its sha256, as PixMo images are after download."""
    path, points = coins_with_points(tmp_path / "raw")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(path, images / f"{sha}.png")
    return images, sha, points


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_5"])
def test_parquet_table_by_sha(tmp_path, coins, family):
    images, sha, points = coins
    assert 20 <= len(points) <= 24  # scikit-image's 24 coins, as a threshold finds them
    table = pa.Table.from_pylist(
        [
            {
                "image_url": "https://x/coins.png",
                "image_sha256": sha,
                "label": "coins",
                "count": len(points),
                "points": [{"x": x, "y": y} for x, y in points],
            },
        ]
    )
    pq.write_table(table, tmp_path / "t.parquet")
    s = convert_pixmo_count(tmp_path / "t.parquet", images, tmp_path / "o.parquet", opts(model_family=family))
    (r,) = rows(tmp_path / "o.parquet")
    assert s["rules"] == {}
    size = (384, 303)
    inp = oracle_input_size(family, size)
    frame = inp if family == "qwen2_5_vl" else (1000, 1000)
    want = [[round(x * frame[0] / size[0]), round(y * frame[1] / size[1])] for x, y in points]
    assert r["gt"] == {"count": len(points), "points": want, "frame": list(frame)}
    assert r["extra_info"]["input_size"] == list(inp) and r["extra_info"]["source_id"] == f"{sha}:coins"
    assert r["prompt"][0]["content"].startswith("<image>Output all the bounding boxes of the coins.")


def test_jsonl_rules(tmp_path, coins):
    images, sha, points = coins
    name = f"{sha}.png"
    recs = [
        {"image": name, "label": "coins", "count": len(points), "points": [[x, y] for x, y in points]},
        {"image": name, "label": "coins", "count": 3, "points": [[1, 1]]},  # duplicate_id
        {"image": name, "label": "silver coins", "count": 5, "points": [[1, 1], [500, -4]]},  # mismatch + outside
        {"image": name, "label": "big coins", "count": 4},  # count_without_points (eval split)
        {"image": name, "label": "", "count": 1, "points": [[1, 1]]},  # empty_text
        {"image": name, "label": "x", "count": -1},  # malformed
        {"image": name, "label": "y", "count": 2, "points": [[1, "a"]]},  # malformed
        {"image": "nope.png", "label": "coins", "count": 0, "points": []},  # missing_image
        {"image": name, "label": "zero coins", "count": 0, "points": []},  # kept: zero counts teach too
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in recs) + "\n")
    s = convert_pixmo_count(path, images, tmp_path / "o.parquet", opts(model_family="qwen2_vl"))
    counts = {k: v["count"] for k, v in s["rules"].items()}
    assert counts == {
        "duplicate_id": 1,
        "count_mismatch": 1,
        "point_outside_image": 1,
        "count_without_points": 1,
        "empty_text": 1,
        "malformed_record": 2,
        "missing_image": 1,
    }
    got = {r["extra_info"]["source_id"].split(":")[1]: r["gt"] for r in rows(tmp_path / "o.parquet")}
    assert got["silver coins"]["count"] == 2 and got["silver coins"]["points"][1] == [1000, 0]
    assert got["big coins"] == {"count": 4, "points": [], "frame": [1000, 1000]}
    assert got["zero coins"]["count"] == 0


def test_cli(tmp_path, coins):
    images, sha, points = coins
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"image_sha256": sha, "label": "coins", "count": len(points), "points": points}) + "\n")
    out = tmp_path / "o.parquet"
    run = prep("pixmo_count", "--table", path, "--images", images, "--out", out, "--think")
    assert run.returncode == 0, run.stderr
    (r,) = rows(out)
    assert r["gt"]["count"] == len(points) and r["extra_info"]["think"] is True


def test_hugging_face_layout(tmp_path, coins):
    """PixMo-Count's parquet stores points as {"x": [...], "y": [...]}; eval rows have none."""
    images, sha, points = coins
    schema = pa.schema(
        [
            ("image_sha256", pa.string()),
            ("count", pa.int32()),
            ("label", pa.string()),
            ("points", pa.struct([("x", pa.list_(pa.float32())), ("y", pa.list_(pa.float32()))])),
        ]
    )
    table = pa.Table.from_pylist(
        [
            {
                "image_sha256": sha,
                "count": len(points),
                "label": "coins",
                "points": {"x": [p[0] for p in points], "y": [p[1] for p in points]},
            },
            {"image_sha256": sha, "count": 5, "label": "large coins", "points": {"x": [], "y": []}},
        ],
        schema=schema,
    )
    pq.write_table(table, tmp_path / "validation.parquet")
    s = convert_pixmo_count(
        tmp_path / "validation.parquet", images, tmp_path / "o.parquet", opts(model_family="qwen2_vl")
    )
    assert {k: v["count"] for k, v in s["rules"].items()} == {"count_without_points": 1}
    got = {r["extra_info"]["source_id"].split(":")[1]: r["gt"] for r in rows(tmp_path / "o.parquet")}
    assert got["coins"]["count"] == len(points) == len(got["coins"]["points"])
    assert got["large coins"] == {"count": 5, "points": [], "frame": [1000, 1000]}
