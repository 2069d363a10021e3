"""The four tasks' training sets in one run: the mix spec and the count of what was prepared.

verl's ``RLHFDataset`` takes a list of ``data.train_files`` and concatenates them
(``datasets.concatenate_datasets``); its sampler then shuffles the whole (``data.shuffle``,
seeded by ``data.seed``), so every step draws from all tasks. verl has no per-file ratio,
so the ratio is the files' sizes: each task's converter draws exactly its share
(``--limit``, seeded) into its own parquet. No rows are copied into a mixed file, and a
task's images are stored once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def parse_mix(spec: str, default: Mapping[str, int]) -> dict[str, int]:
    """``task:rows,...`` -> ``{task: rows}``, in the spec's order; an empty spec gives ``default``.

    Only the tasks of ``default`` are known; each appears once, with a positive row count.

    >>> parse_mix("refcoco:100, coco_det:50", {"refcoco": 1, "coco_det": 2, "page_ocr": 3})
    {'refcoco': 100, 'coco_det': 50}
    >>> parse_mix("", {"refcoco": 1})
    {'refcoco': 1}
    >>> parse_mix("refcoco:0", {"refcoco": 1})
    Traceback (most recent call last):
    ...
    SystemExit: MIX: 'refcoco:0' needs a positive number of rows
    """
    if not spec.strip():
        return dict(default)
    mix: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, rows = item.partition(":")
        name = name.strip()
        if name not in default:
            raise SystemExit(f"MIX: unknown task {name!r}; choose from {', '.join(default)}")
        if name in mix:
            raise SystemExit(f"MIX: {name} appears twice")
        try:
            count = int(rows) if sep else 0
        except ValueError:
            count = 0
        if count <= 0:
            raise SystemExit(f"MIX: {item!r} needs a positive number of rows")
        mix[name] = count
    return mix


def parquet_rows(path: Path) -> int:
    """Rows of a parquet file, from its footer (no data is read)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def mix_report(asked: Mapping[str, int], got: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """Lines describing the prepared mix, and the problems that make its ratio wrong.

    A task with fewer rows than asked is reported (its source is smaller, or the
    converter skipped rows and said why); one with more was prepared for another ``MIX``
    and would skew the ratio, so it is a problem.

    >>> lines, problems = mix_report({"refcoco": 4, "coco_det": 8}, {"refcoco": 4, "coco_det": 6})
    >>> lines[0]
    'refcoco: 4 rows (40.0%)'
    >>> lines[1]
    'coco_det: 6 rows (60.0%), fewer than the 8 asked (a smaller source, or rows its converter skipped)'
    >>> mix_report({"refcoco": 4}, {"refcoco": 9})[1]
    ['refcoco: 9 rows prepared, MIX asks 4']
    """
    total = sum(got.values()) or 1
    lines, problems = [], []
    for name, want in asked.items():
        have = got[name]
        line = f"{name}: {have} rows ({100 * have / total:.1f}%)"
        if have < want:
            line += f", fewer than the {want} asked (a smaller source, or rows its converter skipped)"
        elif have > want:
            problems.append(f"{name}: {have} rows prepared, MIX asks {want}")
        lines.append(line)
    return lines, problems
