"""PixMo-Count's exported table -> counting rows.

The table (``.parquet``, ``.jsonl`` or ``.json``, as ``datasets`` exports it) has
``label``, ``count`` and ``points`` (a list of ``{"x", "y"}`` or ``[x, y]`` in image
pixels; absent in the eval splits). The image is found by an ``image`` /
``image_path`` / ``file_name`` column relative to the image folder or, since PixMo ships
URLs, by ``image_sha256``: a file in the folder whose name (without extension) is the
hash, the usual way the images are saved after download.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from perception_r1_verl.data.common import (
    ConvertOptions,
    Geometry,
    Job,
    Stats,
    add_common_args,
    convert,
    is_duplicate,
    is_number,
    make_row,
    pick,
    read_table,
    run_cli,
)
from perception_r1_verl.prompts import prompt_text


def _points(raw) -> list[list[float]] | None:
    """``[{"x":..,"y":..}, ...]``, ``[[x, y], ...]`` or ``{"x": [..], "y": [..]}`` (how a
    ``datasets`` Sequence of x/y is stored, as in PixMo-Count's parquet) -> ``[[x, y], ...]``;
    None if malformed.

    >>> _points([{"x": 1, "y": 2.5}, [3, 4]]), _points({"x": [1, 3], "y": [2, 4]})
    ([[1, 2.5], [3, 4]], [[1, 2], [3, 4]])
    """
    if isinstance(raw, dict):
        xs, ys = raw.get("x"), raw.get("y")
        if not (isinstance(xs, list) and isinstance(ys, list) and len(xs) == len(ys)):
            return None
        raw = [list(p) for p in zip(xs, ys)]
    out = []
    for p in raw:
        xy = [p.get("x"), p.get("y")] if isinstance(p, dict) else p
        if not (isinstance(xy, list | tuple) and len(xy) == 2 and all(map(is_number, xy))):
            return None
        out.append(list(xy))
    return out


def _sha_index(images: Path) -> dict[str, str]:
    """File stem -> file name for every file in ``images`` (one directory scan)."""
    with os.scandir(images) as it:
        return {os.path.splitext(e.name)[0]: e.name for e in it if e.is_file()}


def load_pixmo(table: Path, images: Path, stats: Stats) -> list[Job]:
    """One job per table row with a usable label, count/points and image reference."""
    images = Path(images)
    by_sha: dict[str, str] | None = None
    jobs, seen = [], set()
    for where, rec in read_table(table, stats):
        label, count, raw_points = rec.get("label"), rec.get("count"), rec.get("points")
        points = _points(raw_points) if isinstance(raw_points, list | dict) else None
        image = pick(rec, "image", "image_path", "file_name")
        sha = rec.get("image_sha256")
        if not isinstance(image, str) and isinstance(sha, str):
            by_sha = _sha_index(images) if by_sha is None else by_sha
            image = by_sha.get(sha, sha)  # a missing file is reported when it is read
        ok = (
            isinstance(label, str)
            and isinstance(image, str)
            and (raw_points is None or points is not None)
            and (count is None or (isinstance(count, int) and not isinstance(count, bool) and count >= 0))
            and (count is not None or points is not None)
        )
        if not ok:
            stats.hit("malformed_record", where)
            continue
        if not label.strip():
            stats.hit("empty_text", where)
            continue
        source_id = f"{sha or image}:{label.strip()}"
        if is_duplicate(source_id, seen, stats, where):
            continue
        seen.add(source_id)
        if points == [] and count:  # eval splits: a count, no points
            points = None
        if points is not None and count is not None and count != len(points):
            stats.hit("count_mismatch", f"{where}: count {count}, {len(points)} points")
        jobs.append(Job(source_id, images / image, f"{where} ({image})", (label.strip(), count, points)))
    return jobs


def counting_builder(options: ConvertOptions, data_source: str = "pixmo_count"):
    """The ``build_row`` for :func:`convert` turning a PixMo row into a counting row."""

    def build(job: Job, geo: Geometry, image: bytes, index: int, stats: Stats):
        label, count, points = job.payload
        if points is None:
            stats.hit("count_without_points", job.record)
            gt = {"count": count, "points": [], "frame": list(geo.frame)}
        else:
            pts = [geo.point(p, stats, job.record) for p in points]
            gt = {"count": len(pts), "points": pts, "frame": list(geo.frame)}
        return make_row(
            data_source=data_source,
            task="counting",
            prompt=prompt_text("counting", options.model_family, label=label, think=options.think),
            image=image,
            geometry=geo,
            ground_truth=gt,
            source_id=job.source_id,
            index=index,
            options=options,
        )

    return build


def convert_pixmo_count(
    table: Path, images: Path, out: Path, options: ConvertOptions | None = None, *, data_source: str = "pixmo_count"
) -> dict:
    """Convert a PixMo-Count table (and its downloaded images) to ``out``; returns the summary."""
    options = options or ConvertOptions()
    stats = Stats(options.strict)
    jobs = load_pixmo(table, images, stats)
    return convert(jobs, counting_builder(options, data_source), out, options, stats, data_source)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="data_prep/pixmo_count.py",
        description="PixMo-Count table -> verl parquet (task 'counting').",
    )
    p.add_argument("--table", required=True, type=Path, help="the exported table (.parquet, .jsonl or .json)")
    p.add_argument("--images", required=True, type=Path, help="folder of the downloaded images")
    p.add_argument("--data-source", default="pixmo_count", help="data_source column (default: pixmo_count)")
    add_common_args(p)
    return p


def main(argv=None) -> int:
    return run_cli(
        build_parser(), argv, lambda a, o: convert_pixmo_count(a.table, a.images, a.out, o, data_source=a.data_source)
    )
