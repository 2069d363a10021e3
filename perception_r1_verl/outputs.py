"""Outputs never clobber inputs: every command that writes a file checks it here first.

Swapped arguments (``--out`` given the split, the annotations or a previous report) must
stop the command before it writes, not truncate the file: an existing output is only
overwritten or appended to when its first bytes show it is that command's own kind.
"""

from __future__ import annotations

import os
from pathlib import Path

# What each kind of output starts with (a conversion rewrites a parquet, ``generate``
# appends to its own jsonl, reports are rewritten).
_MAGIC = {
    "parquet": (b"PAR1",),
    "responses": (b'{"index":',),  # orjson.dumps({"index": ..., "response": ...})
    "html": (b"<!doctype html>",),
    "png": (b"\x89PNG",),
}


class OutputError(ValueError):
    """An output path that would destroy an input or a file of another kind."""


def check_output(out, inputs=(), kind: str | None = None) -> None:
    """Raise :class:`OutputError` if writing ``out`` would overwrite one of ``inputs`` or an
    existing file that is not a ``kind`` output (``"dir"``: an output folder).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); (d / "split.parquet").write_bytes(b"PAR1...")
    7
    >>> check_output(d / "responses.jsonl", [d / "split.parquet"], "responses")  # new: fine
    >>> check_output(d / "split.parquet", [d / "split.parquet"], "responses")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    perception_r1_verl.outputs.OutputError: refusing to write .../split.parquet: it is an input of this command
    >>> check_output(d / "split.parquet", [], "responses")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    perception_r1_verl.outputs.OutputError: refusing to write .../split.parquet: it exists and is not a responses file
    """
    out = Path(out)
    for path in inputs:
        if path is not None and _same(out, Path(path)):
            raise OutputError(f"refusing to write {out}: it is an input of this command")
    if kind == "dir":
        if out.exists() and not out.is_dir():
            raise OutputError(f"refusing to write into {out}: it exists and is not a folder")
    elif kind is not None and out.exists():
        if out.is_dir() or not _starts_with(out, _MAGIC[kind]):
            raise OutputError(f"refusing to write {out}: it exists and is not a {kind} file")


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _starts_with(path: Path, magics: tuple[bytes, ...]) -> bool:
    with open(path, "rb") as f:
        head = f.read(max(map(len, magics)))
    return head == b"" or any(head.startswith(m) for m in magics)  # empty: an interrupted first write
