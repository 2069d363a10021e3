"""verl's multimodal row (:data:`SCHEMA`, :func:`make_row`) and the streaming parquet writer."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from perception_r1_verl.data.geometry import Geometry
from perception_r1_verl.data.options import ConvertOptions
from perception_r1_verl.prompts import chat

SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        (
            "images",
            pa.list_(pa.struct([("bytes", pa.binary()), ("min_pixels", pa.int64()), ("max_pixels", pa.int64())])),
        ),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [
                    ("task", pa.string()),
                    ("index", pa.int64()),
                    ("split", pa.string()),
                    ("source_id", pa.string()),
                    ("image_size", pa.list_(pa.int64())),
                    ("input_size", pa.list_(pa.int64())),
                    ("model_family", pa.string()),
                    ("think", pa.bool_()),
                ]
            ),
        ),
    ]
)


def make_row(
    *,
    data_source: str,
    task: str,
    prompt: str,
    image: bytes,
    geometry: Geometry,
    ground_truth: dict,
    source_id: str,
    index: int,
    options: ConvertOptions,
) -> dict:
    """One row of verl's multimodal schema with the reward contract's ground truth."""
    return {
        "data_source": data_source,
        "prompt": chat(prompt),
        "images": [{"bytes": image, "min_pixels": options.min_pixels, "max_pixels": options.max_pixels}],
        "ability": task,
        "reward_model": {"style": "rule", "ground_truth": orjson.dumps(ground_truth).decode()},
        "extra_info": {
            "task": task,
            "index": index,
            "split": options.split,
            "source_id": source_id,
            "image_size": list(geometry.image_size),
            "input_size": list(geometry.input_size),
            "model_family": options.model_family,
            "think": options.think,
        },
    }


class ParquetSink:
    """Writes rows to ``out`` one row group at a time, atomically on :meth:`close`."""

    def __init__(self, out: Path, row_group_rows: int = 256, row_group_bytes: int = 64 << 20):
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.with_name(self.out.name + ".partial")
        self.writer = pq.ParquetWriter(self.tmp, SCHEMA)
        self.rows: list[dict] = []
        self.nbytes = 0
        self.limits = (row_group_rows, row_group_bytes)
        self.written = 0

    @property
    def count(self) -> int:
        """Rows accepted so far (written or buffered)."""
        return self.written + len(self.rows)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.nbytes += len(row["images"][0]["bytes"])
        if len(self.rows) >= self.limits[0] or self.nbytes >= self.limits[1]:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=SCHEMA))
            self.written += len(self.rows)
            self.rows, self.nbytes = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()
        os.replace(self.tmp, self.out)

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)
