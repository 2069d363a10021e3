"""Counting tables -> counting rows: PixMo-Count's export, or EasyR1-style tables.

Layouts (detected from the file, or chosen with ``layout``):

- ``easyr1``: ``images`` (one image), ``problem``, ``answer`` (a count, as in CLEVR-count
  tables: ``"3"`` or ``"<answer> 3 </answer>"``). The counting prompt needs a label: a
  ``label`` column, else what a "How many X are/is ..." problem counts; other problems are
  malformed. The rows have count-only ground truth (no points, noted ``count_without_points``).
- ``pixmo``: PixMo-Count's table, below.

The PixMo table (``.parquet``, ``.jsonl`` or ``.json``, as ``datasets`` exports it) has
``label``, ``count`` and ``points`` (a list of ``{"x", "y"}`` or ``[x, y]`` in image
pixels; absent in the eval splits). The image is found by an ``image`` /
``image_path`` / ``file_name`` column relative to the image folder or, since PixMo ships
URLs, by ``image_sha256``: a file in the folder whose name (without extension) is the
hash, the usual way the images are saved after download.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from perception_r1_verl.data.cli_args import add_common_args, path_flags, run_cli
from perception_r1_verl.data.driver import Job, RowBuilder, convert
from perception_r1_verl.data.geometry import Geometry
from perception_r1_verl.data.layouts import (
    Layout,
    as_paths,
    image_key,
    keep,
    one_image,
    read_layout,
    strip_image_tokens,
    with_root,
)
from perception_r1_verl.data.options import ConvertOptions
from perception_r1_verl.data.rules import DataError, Stats
from perception_r1_verl.data.tables import is_number, pick
from perception_r1_verl.prompts import prompt_text

if TYPE_CHECKING:
    from perception_r1_verl.data.sample import SampleSources


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
    try:
        with os.scandir(images) as it:
            return {os.path.splitext(e.name)[0]: e.name for e in it if e.is_file()}
    except OSError as e:
        raise DataError(f"cannot list the image folder {images} (--images): {e.strerror}") from e


class Count(NamedTuple):
    image: object  # a path relative to the image folder, a TableImage, or None (then sha)
    sha: str | None
    label: str
    count: int | None
    points: list | None  # [[x, y], ...] in image pixels; None: count-only ground truth
    id: object = None  # None: named sha-or-image:label


# Layout readers: one record -> its counting question, or None when the record is malformed.


def _read_own(rec: dict) -> Count | None:
    label, count, raw_points = rec.get("label"), rec.get("count"), rec.get("points")
    points = _points(raw_points) if isinstance(raw_points, list | dict) else None
    image, sha = pick(rec, "image", "image_path", "file_name"), rec.get("image_sha256")
    ok = (
        isinstance(label, str)
        and (isinstance(image, str) or isinstance(sha, str))
        and (raw_points is None or points is not None)
        and (count is None or _is_count(count))
        and (count is not None or points is not None)
    )
    return (
        Count(image if isinstance(image, str) else None, sha if isinstance(sha, str) else None, label, count, points)
        if ok
        else None
    )


def _read_easyr1(rec: dict) -> Count | None:
    image, count = one_image(rec.get("images")), answer_count(rec.get("answer"))
    label = rec.get("label") if isinstance(rec.get("label"), str) else label_from_question(rec.get("problem"))
    if image is None or count is None or label is None:
        return None
    return Count(image, None, label, count, None, rec.get("id"))


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def answer_count(v) -> int | None:
    """A count given as an integer or its digits, optionally in ``<answer>`` tags.

    >>> answer_count("<answer> 10 </answer>"), answer_count(3), answer_count("three")
    (10, 3, None)
    """
    if isinstance(v, str):
        v = v.replace("<answer>", "").replace("</answer>", "").strip()
        v = int(v) if v.isascii() and v.isdigit() else None
    return v if _is_count(v) else None


_HOW_MANY = re.compile(r"\bhow many (.+?)\s+(?:are|is)\b", re.IGNORECASE)


def label_from_question(problem) -> str | None:
    """What a "How many ... are there" question counts (the counting prompt needs a label).

    >>> label_from_question("<image>How many items are there in the image?")
    'items'
    >>> label_from_question("What is the total?") is None
    True
    """
    m = _HOW_MANY.search(strip_image_tokens(problem)) if isinstance(problem, str) else None
    return m.group(1) if m else None


LAYOUTS = (
    Layout(
        "easyr1",
        (("images",), ("problem",), ("answer",)),
        "hiyouga/EasyR1 verl/utils/dataset.py @b44b311 (images, problem, answer), as in its CLEVR-count "
        "baseline examples/baselines/qwen2_5_vl_3b_clevr.sh; answer a count, problem 'How many X are ...'",
        _read_easyr1,
        image_columns=("images",),
    ),
    Layout(
        "pixmo",
        (("label",), ("count", "points"), ("image", "image_path", "file_name", "image_sha256")),
        "allenai/pixmo-count as exported by datasets: image_url, image_sha256, count, points, label",
        _read_own,
    ),
)


def load_pixmo(table, images: Path, stats: Stats, layout: str | None = None) -> list[Job]:
    """One job per table row with a usable label, count/points and image reference."""
    images = Path(images)
    by_sha: dict[str, str] | None = None
    jobs, seen = [], set()
    for where, c in read_layout(table, LAYOUTS, stats, layout):
        image = c.image
        if image is None:
            by_sha = _sha_index(images) if by_sha is None else by_sha
            image = by_sha.get(c.sha, c.sha)  # a missing file is reported when it is read
        label = c.label.strip()
        source_id = str(c.id) if c.id is not None else f"{c.sha or image_key(image, where)}:{label}"
        path = with_root(image, images, stats, where)
        if path is None or not keep(label, source_id, seen, stats, where):
            continue
        points, count = c.points, c.count
        if points == [] and count:  # eval splits: a count, no points
            points = None
        if points is not None and count is not None and count != len(points):
            stats.hit("count_mismatch", f"{where}: count {count}, {len(points)} points")
        jobs.append(Job(source_id, path, f"{where} ({image})", (label, count, points)))
    return jobs


def counting_builder(options: ConvertOptions, data_source: str = "pixmo_count") -> RowBuilder:
    """Counting rows of counting-table jobs, for :func:`convert`."""

    def answer(job: Job, geo: Geometry, stats: Stats):
        label, count, points = job.payload
        if points is None:
            stats.hit("count_without_points", job.record)
            gt = {"count": count, "points": [], "frame": list(geo.frame)}
        else:
            pts = [geo.point(p, stats, job.record) for p in points]
            gt = {"count": len(pts), "points": pts, "frame": list(geo.frame)}
        return prompt_text("counting", options.model_family, label=label, think=options.think), gt

    return RowBuilder("counting", data_source, answer)


def convert_pixmo_count(
    table,
    images: Path | None,
    out: Path,
    options: ConvertOptions | None = None,
    *,
    data_source: str = "pixmo_count",
    layout: str | None = None,
) -> dict:
    """Convert counting tables (one path or several; PixMo-Count's with its downloaded
    images, or EasyR1-style) to ``out``; ``images`` defaults to the first table's folder."""
    options = options or ConvertOptions()
    stats = Stats(options.strict)
    tables = as_paths(table)
    jobs = load_pixmo(tables, Path(images) if images is not None else tables[0].parent, stats, layout)
    return convert(jobs, counting_builder(options, data_source), out, options, stats)


# The training recipe's sources (perception_r1_verl.recipe.data): the Hugging Face export under
# DATASET_ROOT (release_paths), and the offline sample.
RELEASE_SPLITS = {"train": "train", "val": "validation", "test": "test"}  # the Hugging Face split names


def release_paths(root: Path, split: str) -> dict[str, Path]:
    """The converter's inputs for ``split`` of the Hugging Face export under ``root``
    (``{train,validation,test}.parquet``, ``images/`` named by image_sha256): the one
    description of the layout, read by the recipe and the eval suite.

    >>> release_paths(Path("/d"), "val")
    {'table': PosixPath('/d/validation.parquet'), 'images': PosixPath('/d/images')}
    """
    return {"table": root / f"{RELEASE_SPLITS[split]}.parquet", "images": root / "images"}


def release_args(split: str, root: Path) -> list[str]:
    """Flags for ``split`` of PixMo-Count laid out under ``root``.

    >>> release_args("val", Path("/d"))
    ['--table', '/d/validation.parquet', '--images', '/d/images']
    """
    return path_flags(release_paths(root, split))


def sample_args(sources: SampleSources) -> list[str]:
    """Flags for the offline sample (``data.sample.make_sample_sources``)."""
    return ["--table", str(sources.counting), "--images", str(sources.images)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="perception-r1-prep pixmo_count",
        description="PixMo-Count table -> verl parquet (task 'counting').",
    )
    p.add_argument("--table", nargs="+", required=True, type=Path, help="tables (.parquet, .jsonl or .json)")
    p.add_argument(
        "--layout", choices=[x.name for x in LAYOUTS], help="the tables' layout (default: detected from each file)"
    )
    p.add_argument("--images", type=Path, help="folder of the downloaded images (default: the table's folder)")
    p.add_argument("--data-source", default="pixmo_count", help="data_source column (default: pixmo_count)")
    add_common_args(p)
    return p


def main(argv=None) -> int:
    return run_cli(
        build_parser(),
        argv,
        lambda a, o: convert_pixmo_count(a.table, a.images, a.out, o, data_source=a.data_source, layout=a.layout),
    )
