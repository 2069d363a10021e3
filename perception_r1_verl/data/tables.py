"""Reading input tables (jsonl, json, parquet) and the field checks every reader shares."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import orjson
import pyarrow.parquet as pq

from perception_r1_verl.data.rules import DataError, Stats


def read_table(path: Path, stats: Stats) -> Iterator[tuple[str, dict]]:
    """Yield ``(where, record)`` from a ``.jsonl``, ``.json`` (a list) or ``.parquet`` file.

    A jsonl line that is not a JSON object counts as ``malformed_record``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"input file {path} does not exist")
    if path.suffix == ".parquet":
        for n, rec in iter_parquet(path):
            yield f"{path.name} row {n}", rec
    elif path.suffix == ".json":
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(data, list):
            raise DataError(f"{path} must hold a JSON list of records")
        for n, rec in enumerate(data):
            yield from _checked(f"{path.name} item {n}", rec, stats)
    else:
        with path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    stats.hit("malformed_record", f"{path.name} line {n}: {e}")
                    continue
                yield from _checked(f"{path.name} line {n}", rec, stats)


def iter_parquet(path: Path, columns: list[str] | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(row number, record)`` of a parquet file, reading only ``columns`` (None: all)."""
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096, columns=columns):
        for rec in batch.to_pylist():
            yield n, rec
            n += 1


def _checked(where: str, rec, stats: Stats):
    if isinstance(rec, dict):
        yield where, rec
    else:
        stats.hit("malformed_record", f"{where}: not an object")


def pick(record: dict, *keys):
    """The first of ``keys`` present (and not None) in ``record``, else None.

    >>> pick({"b": 2}, "a", "b")
    2
    """
    for key in keys:
        if record.get(key) is not None:
            return record[key]
    return None


def is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def is_id(v) -> bool:
    """Whether ``v`` can be a record id: ids key dicts, so a list or dict (or a bool) is malformed.

    >>> is_id(22), is_id("22"), is_id([22]), is_id({"id": 22}), is_id(True)
    (True, True, False, False, False)
    """
    return isinstance(v, int | str) and not isinstance(v, bool)


def is_duplicate(key, seen, stats: Stats, record: str) -> bool:
    """Whether ``key`` is already in ``seen`` (counted as ``duplicate_id``); callers add it."""
    if key in seen:
        stats.hit("duplicate_id", record)
        return True
    return False


def under_root(root: Path, name: str) -> Path | None:
    """``root / name`` when the dataset's ``name`` stays inside ``root``, else None.

    Judged on the name as the dataset file writes it, never on where links point: a root
    that is a link, or links the user placed inside it, keep working, while an absolute
    name or ``..`` parts that climb above the root are refused (a dataset file from the
    internet must not pull other files of the machine into a shared parquet).

    >>> under_root(Path("/d"), "train/a.jpg"), under_root(Path("/d"), "x/../a.jpg")
    (PosixPath('/d/train/a.jpg'), PosixPath('/d/x/../a.jpg'))
    >>> [under_root(Path("/d"), n) for n in ("../a.jpg", "x/../../a.jpg", "/etc/passwd", "")]
    [None, None, None, None]
    """
    if not isinstance(name, str) or not name or "\x00" in name or PurePosixPath(name).is_absolute():
        return None
    depth = 0
    for part in PurePosixPath(name).parts:
        depth += -1 if part == ".." else part != "."
        if depth < 0:
            return None
    return Path(root) / name
