"""Published table layouts: detect which one a file is in, and read its records.

A converter lists the :class:`Layout` s it accepts; each names the columns that identify
it and a small ``read`` function mapping one record to the converter's fields (None when
the record is malformed). :func:`read_layout` detects the layout from the file (its
parquet schema, else the keys of its first record) unless one is forced, and yields the
fields of every record, counting the malformed ones. A file in none of the layouts is a
:class:`DataError` naming those it accepts, and so is a file none of whose records its
layout reads (a variant of a layout must not convert to 0 rows in silence).

Parquet columns holding image bytes (the Hugging Face ``Image`` feature, a struct of
``bytes`` and ``path``, or a list of them) are not read while listing: the record holds a
:class:`TableImage` instead, read when the image is, decoding the image column of one
row group at a time rather than every image of the file while listing.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from perception_r1_verl.data.rules import CellError, DataError, OutsideRootError, Stats
from perception_r1_verl.data.tables import is_duplicate, is_number, iter_parquet, read_table, under_root


@dataclass(frozen=True)
class TableImage:
    """The image in row ``row``, column ``column`` of a parquet file, read on demand.

    A cell without bytes falls back to its ``path`` under ``root`` (how ``datasets``
    stores an image it did not embed).
    """

    table: Path
    row: int
    column: str
    root: Path | None = None

    def read_bytes(self) -> bytes:
        return cell_image_bytes(_read_cell(self.table, self.column, self.row), self.root)

    def __str__(self) -> str:
        return f"{self.table.name} row {self.row} column {self.column}"


def cell_image_bytes(cell, root: Path | None = None) -> bytes:
    """The bytes of the single image in ``cell`` (raw bytes, ``{bytes, path}`` or a list of one).

    >>> cell_image_bytes([{"bytes": b"png", "path": "a.png"}])
    b'png'
    >>> cell_image_bytes([{"bytes": b"a"}, {"bytes": b"b"}])
    Traceback (most recent call last):
    ...
    perception_r1_verl.data.rules.CellError: the cell holds 2 images; the task needs exactly one
    """
    if isinstance(cell, list):
        if len(cell) != 1:
            raise CellError(f"the cell holds {len(cell)} images; the task needs exactly one")
        cell = cell[0]
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return cell["bytes"]
        if cell.get("path"):
            path = under_root(Path(root or "."), cell["path"])
            if path is None:
                raise OutsideRootError(f"the cell's path {cell['path']!r} leaves the image folder")
            return path.read_bytes()
    elif isinstance(cell, bytes) and cell:
        return cell
    raise FileNotFoundError("the cell holds neither image bytes nor a path")


# One open file per process (a converter reads its tables in order): the file, the first
# row of each row group, and the decoded column of the last group read.
_cache: dict = {}


def _read_cell(table: Path, column: str, row: int):
    if _cache.get("key") != (table, column):
        pf = pq.ParquetFile(table)
        starts = [0]
        for g in range(pf.num_row_groups):
            starts.append(starts[-1] + pf.metadata.row_group(g).num_rows)
        _cache.clear()
        _cache.update(key=(table, column), file=pf, starts=starts, group=None, values=None)
    g = bisect.bisect_right(_cache["starts"], row) - 1
    if _cache["group"] != g:
        _cache["values"] = _cache["file"].read_row_group(g, columns=[column]).column(0).to_pylist()
        _cache["group"] = g
    return _cache["values"][row - _cache["starts"][g]]


def with_root(image, root: Path, stats: Stats, where: str):
    """Where ``image`` (a relative path or a :class:`TableImage`) is read from, under ``root``;
    None, counted, for a path that leaves ``root`` (see :func:`under_root`)."""
    if isinstance(image, TableImage):
        return replace(image, root=Path(root))
    path = under_root(root, image)
    if path is None:
        stats.hit("image_outside_root", f"{where} ({image})")
    return path


@dataclass(frozen=True)
class Layout:
    """A published layout: the columns that identify it and how one record is read."""

    name: str
    columns: tuple[tuple[str, ...], ...]  # each group: at least one of these keys is present
    source: str  # where the layout is published (repo, file, commit)
    read: Callable[[dict], object]  # record -> the converter's fields, or None if malformed
    image_columns: tuple[str, ...] = ()  # parquet columns of image bytes, read lazily

    def matches(self, keys: Iterable[str]) -> bool:
        keys = set(keys)
        return all(keys & set(group) for group in self.columns)

    def describe(self) -> str:
        """``name (a + b|c)``: the name and the columns it needs."""
        return f"{self.name} ({' + '.join('|'.join(g) for g in self.columns)})"


def detect(keys: Iterable[str], layouts: Sequence[Layout], where: str) -> Layout:
    """The first of ``layouts`` whose columns ``keys`` has; else a DataError naming them all."""
    keys = list(keys)
    for layout in layouts:
        if layout.matches(keys):
            return layout
    accepted = "; ".join(layout.describe() for layout in layouts)
    raise DataError(
        f"{where} is in no layout this converter reads (its columns: {', '.join(sorted(keys)) or 'none'}). "
        f"Accepted layouts: {accepted}. Use --layout to choose one."
    )


def by_name(layouts: Sequence[Layout], name: str | None) -> Layout | None:
    """The layout called ``name`` (None: none forced)."""
    if name is None:
        return None
    for layout in layouts:
        if layout.name == name:
            return layout
    raise ValueError(f"layout must be one of {[x.name for x in layouts]}, got {name!r}")


def read_layout(
    paths: Path | Sequence[Path], layouts: Sequence[Layout], stats: Stats, layout: str | None = None
) -> Iterator[tuple[str, object]]:
    """Yield ``(where, fields)`` for every readable record of ``paths``.

    Each file's layout is ``layout`` if given, else detected from it. A record the layout
    cannot read counts as ``malformed_record``. A file without any record, or none that
    its layout reads, is a DataError.
    """
    forced = by_name(layouts, layout)
    for path in as_paths(paths):
        if path.suffix == ".parquet" and path.exists():
            schema = pq.read_schema(path)
            chosen = forced or detect(schema.names, layouts, str(path))
            lazy = [c for c in chosen.image_columns if c in schema.names and _has_binary(schema.field(c).type)]
            columns = [c for c in schema.names if c not in lazy]
            records = (
                (f"{path.name} row {n}", rec | {c: TableImage(path, n, c) for c in lazy})
                for n, rec in iter_parquet(path, columns)
            )
        else:
            records, chosen = read_table(path, stats), forced
        seen = read = 0
        for where, rec in records:
            chosen = chosen or detect(rec.keys(), layouts, f"{path} (first record, {where})")
            fields = chosen.read(rec)
            seen += 1
            if fields is None:
                stats.hit("malformed_record", f"{where}: not a {chosen.name} record")
            else:
                read += 1
                yield where, fields
        if chosen is None:
            raise DataError(f"{path} holds no record to detect its layout from")
        if read == 0 and seen:  # the wrong layout, or a variant of it: never 0 rows in silence
            raise DataError(f"none of the {seen} records of {path} reads as {chosen.describe()}")


def _has_binary(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    if pa.types.is_struct(t):
        return any(_has_binary(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _has_binary(t.value_type)
    return False


def as_paths(paths) -> list[Path]:
    """One path or several, as a list.

    >>> as_paths("a.jsonl"), as_paths(["a.parquet", Path("b.parquet")])
    ([PosixPath('a.jsonl')], [PosixPath('a.parquet'), PosixPath('b.parquet')])
    """
    return [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]


def image_key(image, where: str) -> str:
    """How a record without an id is named: its image path, or for an embedded image its row."""
    return where if isinstance(image, TableImage) else str(image)


def keep(text: str, source_id: str, seen: set, stats: Stats, where: str) -> bool:
    """Whether a record is converted: an empty ``text`` or a repeated ``source_id`` is a
    counted skip; a kept id is added to ``seen``."""
    if not text:
        stats.hit("empty_text", where)
        return False
    if is_duplicate(source_id, seen, stats, where):
        return False
    seen.add(source_id)
    return True


# --- small readers the layouts share ---------------------------------------------------


def one_image(value):
    """The single image reference in ``value``: a path, a :class:`TableImage`, or None.

    >>> one_image("a.jpg"), one_image(["a.jpg"]), one_image([{"path": "b.png", "bytes": None}])
    ('a.jpg', 'a.jpg', 'b.png')
    >>> one_image(["a.jpg", "b.jpg"]) is None
    True
    """
    if isinstance(value, TableImage | str):
        return value or None
    if isinstance(value, list) and len(value) == 1:
        return one_image(value[0])
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        return value["path"] or None
    return None


def is_box(v) -> bool:
    """Four finite numbers.

    >>> is_box([1, 2, 3.5, 4]), is_box([1, 2, 3]), is_box("1,2,3,4")
    (True, False, False)
    """
    return isinstance(v, list | tuple) and len(v) == 4 and all(map(is_number, v))


_IMAGE_TOKEN = re.compile(r"<image>")


def strip_image_tokens(text: str) -> str:
    """EasyR1 marks the image's place with ``<image>``; the converters add their own.

    >>> strip_image_tokens("<image>the man in red ")
    'the man in red'
    """
    return _IMAGE_TOKEN.sub("", text).strip()


def xywh_to_xyxy(b) -> list:
    """A COCO ``[x, y, w, h]`` box as ``[x1, y1, x2, y2]``.

    >>> xywh_to_xyxy([10, 20, 5, 6])
    [10, 20, 15, 26]
    """
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]
