"""Read a ``data_prep`` parquet split and a responses jsonl, and match them by index.

A split row is identified by ``extra_info["index"]`` (what verl carries through training
and what ``perception-r1-eval generate`` writes), compared as a string so ``5`` and
``"5"`` agree. Scoring reads only the small columns; images are read on demand
(:func:`read_images`) for the rows a report draws.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import orjson
import pyarrow.parquet as pq

from ..rewards import task_of

_META_COLUMNS = ("data_source", "reward_model", "extra_info")


@dataclass(frozen=True, slots=True)
class Sample:
    """One split row without its image: ``row`` is its position in the parquet."""

    row: int
    index: str
    task: str
    data_source: str
    ground_truth: dict
    extra_info: dict

    @property
    def group(self) -> str:
        """The name results are broken down by: ``data_source/split``."""
        return f"{self.data_source}/{self.extra_info.get('split', '')}".rstrip("/")

    @property
    def think(self) -> bool:
        return bool(self.extra_info.get("think", False))


def _ground_truth(reward_model) -> dict:
    gt = (reward_model or {}).get("ground_truth")
    if isinstance(gt, str | bytes):
        gt = orjson.loads(gt)
    if not isinstance(gt, dict):
        raise ValueError(f"reward_model.ground_truth must be a JSON object, got {type(gt).__name__}")
    return gt


def read_split(path: str | os.PathLike) -> list[Sample]:
    """The rows of a split, in parquet order; raises on rows the contract does not cover."""
    table = pq.read_table(path, columns=list(_META_COLUMNS))
    cols = {name: table.column(name).to_pylist() for name in _META_COLUMNS}
    samples, seen = [], {}
    for row, (source, reward_model, extra_info) in enumerate(zip(*cols.values(), strict=True)):
        extra_info = extra_info or {}
        if extra_info.get("index") is None:
            raise ValueError(f"{path}: row {row} has no extra_info.index")
        index = str(extra_info["index"])
        if index in seen:
            raise ValueError(f"{path}: rows {seen[index]} and {row} share extra_info.index {index!r}")
        seen[index] = row
        try:
            gt = _ground_truth(reward_model)
        except (ValueError, orjson.JSONDecodeError) as e:
            raise ValueError(f"{path}: row {row}: {e}") from e
        task = task_of(source or "", extra_info)
        samples.append(Sample(row, index, task, source or "", gt, extra_info))
    return samples


def read_responses(path: str | os.PathLike, extras: dict | None = None) -> tuple[dict[str, str], dict[str, int]]:
    """``{index: response}`` from a jsonl, and counts of the lines that were not used.

    A line cut off by an interrupted writer or otherwise unreadable is counted in
    ``bad_lines``; a repeated index keeps its first response and is counted in
    ``duplicates``. A missing file raises. ``extras``, when given, receives each kept
    line's other fields (``finish_reason``, ``logprobs``), by index.
    """
    responses: dict[str, str] = {}
    stats = {"bad_lines": 0, "duplicates": 0}
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
                index, response = str(obj["index"]), obj["response"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                stats["bad_lines"] += 1
                continue
            if index in responses:
                stats["duplicates"] += 1
            else:
                responses[index] = response if isinstance(response, str) else ""
                if extras is not None:
                    extras[index] = {k: v for k, v in obj.items() if k not in ("index", "response")}
    return responses, stats


def read_images(path: str | os.PathLike, rows) -> dict[int, list[dict]]:
    """The ``images`` cell of each wanted row, streaming the parquet in batches."""
    wanted, out, offset = set(rows), {}, 0
    for batch in pq.ParquetFile(path).iter_batches(columns=["images"], batch_size=256):
        hits = [r for r in range(offset, offset + batch.num_rows) if r in wanted]
        if hits:
            column = batch.column(0)
            for r in hits:
                out[r] = column[r - offset].as_py() or []
        offset += batch.num_rows
        if len(out) == len(wanted):
            break
    return out
