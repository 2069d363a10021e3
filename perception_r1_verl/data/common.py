"""What every converter shares: options, bad-input rules, image loading, frames, the writer.

A converter turns its source into a list of :class:`Job` (one per output row, holding
only annotations and an image path, so listing a whole dataset is cheap), then
:func:`convert` streams them: images are read and checked (optionally in worker
processes, in bounded windows), ground truth is mapped into the model's answer frame,
and rows go to a parquet file one row group at a time. Memory is bounded by the window
and the row group, not by the number of images.

Coordinates in the answer frame are rounded to integers (the models answer integers)
and clipped to the frame; see :meth:`Geometry.box`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from perception_r1_verl import frames
from perception_r1_verl.prompts import chat

# rule name -> what happens. "skip" drops the row, "drop" drops one object of the row,
# "repair" fixes the value; all of them are bad input, counted, and fatal under --strict.
RULES = {
    "malformed_record": "skip: a record lacks a required field or has one of the wrong type",
    "duplicate_id": "skip: a later record repeats an id already converted (the first one wins)",
    "missing_image": "skip: the image file does not exist",
    "corrupt_image": "skip: the image file cannot be decoded completely",
    "bad_aspect_ratio": "skip: the image is more than 200 times wider than high (or v.v.); the processor refuses it",
    "size_mismatch": "skip: the decoded image size differs from the size in the annotations (EXIF rotation or wrong file)",
    "empty_text": "skip: the expression, label or transcript is empty",
    "no_objects": "skip: a detection image has no object left (use --keep-empty to keep it as a negative)",
    "unknown_category": "drop: the object's category id is not in the category table",
    "unknown_image": "drop: the annotation's image id is not in the image table",
    "box_zero_area": "drop (skip the row for grounding): the box has zero or negative width or height",
    "box_outside_image": "repair: the box is clipped to the image",
    "box_below_resolution": "drop (skip the row for grounding): the box has zero area once rounded in the answer frame",
    "point_outside_image": "repair: the point is clipped to the image",
    "count_mismatch": "repair: count differs from the number of points; the points are the ground truth",
}
# Counted for the record, never errors: documented choices, not bad input.
NOTES = {
    "crowd_ignored": "COCO crowd regions (iscrowd=1) are not detection targets",
    "empty_image_kept": "detection image without objects kept as a negative (--keep-empty)",
    "count_without_points": "counting row with a count but no points (PixMo eval splits): count-only ground truth",
}
_EXAMPLES = 5
# Qwen3-VL's processor enlarges anything under 65536 pixels (its size.shortest_edge), so an
# image verl resized with a smaller minimum would reach the model at another size.
QWEN3_VL_MIN_PIXELS = 65536
IMAGE_STORES = ("original", "resized")
_KEEP_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP"}


class DataError(ValueError):
    """Bad input under ``--strict`` (names the record), or an unusable input file."""


class CellError(ValueError):
    """A table cell that cannot give one image (it holds several)."""


@dataclass
class ConvertOptions:
    """Options shared by every converter (the CLI flags of the same names)."""

    split: str = "train"
    model_family: str = "qwen2_5_vl"
    min_pixels: int | None = None  # None: the family's processor minimum (see QWEN3_VL_MIN_PIXELS)
    max_pixels: int = frames.DEFAULT_MAX_PIXELS
    think: bool = False
    limit: int | None = None
    seed: int = 0
    strict: bool = False
    workers: int = 0
    image_store: str = "original"
    row_group_rows: int = 256
    progress: bool = True

    def __post_init__(self):
        frames.check_family(self.model_family)
        if self.min_pixels is None:
            self.min_pixels = QWEN3_VL_MIN_PIXELS if self.model_family == "qwen3_vl" else frames.DEFAULT_MIN_PIXELS
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if self.image_store not in IMAGE_STORES:
            raise ValueError(f"image_store must be one of {IMAGE_STORES}")
        if self.limit is not None and self.limit <= 0:
            raise ValueError("limit must be positive")


class Stats:
    """Counts every rule hit, keeps a few examples, and raises under ``strict``."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)

    def hit(self, rule: str, record: str, n: int = 1) -> None:
        if rule not in RULES and rule not in NOTES:
            raise KeyError(rule)
        if self.strict and rule in RULES:
            raise DataError(f"{rule} at {record} ({RULES[rule]})")
        self.counts[rule] += n
        if len(self.examples[rule]) < _EXAMPLES:
            self.examples[rule].append(record)

    def as_dict(self) -> dict:
        return {
            rule: {"count": self.counts[rule], "rule": (RULES | NOTES)[rule], "examples": self.examples[rule]}
            for rule in sorted(self.counts)
        }


@dataclass
class Job:
    """One output row before its image is read: annotations in original pixels."""

    source_id: str
    image: Path  # or anything with read_bytes(): a TableImage of a parquet cell
    record: str  # how messages name it, e.g. "image id 42 (a.jpg)"
    payload: object
    expected_size: tuple[int, int] | None = None


@dataclass
class Geometry:
    """Sizes of one image: original, what the model sees, and the answer frame."""

    image_size: tuple[int, int]
    input_size: tuple[int, int]
    frame: tuple[int, int]

    @classmethod
    def of(cls, image_size, options: ConvertOptions) -> Geometry:
        inp = frames.input_size(options.model_family, image_size, options.min_pixels, options.max_pixels)
        return cls(tuple(image_size), inp, frames.answer_frame(options.model_family, inp))

    def box(self, xyxy, stats: Stats, record: str) -> list[int] | None:
        """``xyxy`` (original pixels) in the answer frame, or None when it must be dropped.

        Clipped to the image first (a repair), then scaled and rounded to integers; a box
        with no area left is dropped. Zero-area input boxes are dropped before clipping.

        >>> g = Geometry((640, 480), (644, 476), (644, 476))
        >>> g.box([10.2, 20.7, 700, 100], Stats(), "r")
        [10, 21, 644, 99]
        """
        x1, y1, x2, y2 = xyxy
        if not (x2 > x1 and y2 > y1):
            stats.hit("box_zero_area", record)
            return None
        clipped = frames.clip_box(xyxy, self.image_size)
        if clipped != list(xyxy):
            stats.hit("box_outside_image", record)
        box = [round(v) for v in frames.scale_box(clipped, self.image_size, self.frame)]
        if not (box[2] > box[0] and box[3] > box[1]):
            stats.hit("box_below_resolution", record)
            return None
        return box

    def point(self, xy, stats: Stats, record: str) -> list[int]:
        """A point (original pixels) in the answer frame, clipped and rounded.

        >>> Geometry((100, 50), (112, 56), (1000, 1000)).point([50, 60], Stats(), "r")
        [500, 1000]
        """
        x = min(max(xy[0], 0), self.image_size[0])
        y = min(max(xy[1], 0), self.image_size[1])
        if (x, y) != (xy[0], xy[1]):
            stats.hit("point_outside_image", record)
        sx, sy = self.frame[0] / self.image_size[0], self.frame[1] / self.image_size[1]
        return [round(x * sx), round(y * sy)]


# --- images -------------------------------------------------------------------------


@dataclass
class LoadedImage:
    """What a worker returns: the bytes to store and the original size, or a rule hit."""

    data: bytes = b""
    size: tuple[int, int] = (0, 0)
    error: str | None = None  # a RULES key
    detail: str = ""


def load_image(path, store: str, family: str, min_pixels: int, max_pixels: int) -> LoadedImage:
    """Read and fully decode one image (a file, or anything with ``read_bytes``, such as
    :class:`~perception_r1_verl.data.layouts.TableImage`); never raises for bad files.

    ``store="original"`` keeps the file's bytes (re-encoded as PNG only for formats
    other than JPEG/PNG/WebP/GIF/BMP); ``"resized"`` stores the image already resized
    to the model's input size as JPEG, which the processor then leaves as it is.
    """
    try:
        data = (path if hasattr(path, "read_bytes") else Path(path)).read_bytes()
    except FileNotFoundError:
        return LoadedImage(error="missing_image", detail=str(path))
    except CellError as e:
        return LoadedImage(error="malformed_record", detail=f"{path}: {e}")
    except OSError as e:
        return LoadedImage(error="corrupt_image", detail=f"{path}: {e}")
    try:
        with Image.open(BytesIO(data)) as im:
            im.load()  # a truncated file fails here, not at training time
            size, fmt = im.size, im.format
            try:
                target = frames.input_size(family, size, min_pixels, max_pixels)
            except ValueError as e:
                return LoadedImage(error="bad_aspect_ratio", detail=f"{path}: {e}")
            if store == "resized":
                data = _encode(_to_rgb(im).resize(target), "JPEG")
            elif fmt not in _KEEP_FORMATS:
                data = _encode(im, "PNG")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        return LoadedImage(error="corrupt_image", detail=f"{path}: {e}")
    return LoadedImage(data=data, size=size)


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB as ``qwen_vl_utils`` makes it (alpha composited on white)."""
    if im.mode == "RGBA":
        out = Image.new("RGB", im.size, (255, 255, 255))
        out.paste(im, mask=im.split()[3])
        return out
    return im.convert("RGB")


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = BytesIO()
    im.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _load_job_image(args) -> LoadedImage:
    return load_image(*args)


# --- rows and the writer -------------------------------------------------------------

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


# --- the driver ----------------------------------------------------------------------

Answer = Callable[[Job, Geometry, Stats], "tuple[str, dict] | None"]


@dataclass(frozen=True)
class RowBuilder:
    """What a converter adds to the shared row: its task, ``data_source`` and ``answer``.

    ``answer(job, geometry, stats)`` returns the prompt and the ground truth of the job's
    row (ground truth in the answer frame), or None after counting why it has none.
    """

    task: str
    data_source: str
    answer: Answer

    def row(self, job: Job, img: LoadedImage, index: int, options: ConvertOptions, stats: Stats) -> dict | None:
        """The row of ``job`` with its loaded image, or None after counting why."""
        if img.error:
            stats.hit(img.error, f"{job.record}: {img.detail}")
            return None
        if job.expected_size is not None and tuple(job.expected_size) != img.size:
            stats.hit("size_mismatch", f"{job.record}: annotated {job.expected_size}, file {img.size}")
            return None
        geometry = Geometry.of(img.size, options)
        answered = self.answer(job, geometry, stats)
        if answered is None:
            return None
        prompt, ground_truth = answered
        return make_row(
            data_source=self.data_source,
            task=self.task,
            prompt=prompt,
            image=img.data,
            geometry=geometry,
            ground_truth=ground_truth,
            source_id=job.source_id,
            index=index,
            options=options,
        )


def summary_path(out: Path) -> Path:
    """Where the summary of ``out`` goes: ``train.parquet`` -> ``train.summary.json``."""
    return Path(out).with_suffix(".summary.json")


def convert(jobs: Sequence[Job], builder: RowBuilder, out: Path, options: ConvertOptions, stats: Stats) -> dict:
    """Stream ``jobs`` into ``out`` as ``builder``'s rows; return (and write next to it) the summary.

    With ``options.limit`` the jobs are visited in a seeded random order until that many
    rows are written.
    """
    start = time.perf_counter()
    order = np.random.default_rng(options.seed).permutation(len(jobs)) if options.limit else range(len(jobs))
    target = min(options.limit or len(jobs), len(jobs))
    sink = ParquetSink(out, options.row_group_rows)
    seen = 0
    try:
        with _progress(target, options.progress, builder.data_source) as bar:
            for job, img in _images(jobs, order, options):
                seen += 1
                row = builder.row(job, img, sink.count, options, stats)
                if row is not None:
                    sink.add(row)
                    bar.update(1)
                    if sink.count >= target:
                        break
        sink.close()
    except BaseException:
        sink.abort()
        raise
    elapsed = time.perf_counter() - start
    summary = {
        "source": builder.data_source,
        "out": str(out),
        "rows": sink.written,
        "records": len(jobs),
        "records_visited": seen,
        "seconds": round(elapsed, 3),
        "rows_per_second": round(sink.written / elapsed, 1) if elapsed > 0 else None,
        "rules": stats.as_dict(),
        "options": asdict(options),
    }
    summary_path(out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _images(jobs: Sequence[Job], order, options: ConvertOptions) -> Iterator[tuple[Job, LoadedImage]]:
    """Yield ``(job, image)`` in ``order``, loading images in bounded windows."""
    args = (options.image_store, options.model_family, options.min_pixels, options.max_pixels)
    if options.workers <= 0:
        for i in order:
            yield jobs[i], load_image(jobs[i].image, *args)
        return
    window = max(64, 16 * options.workers)  # enough to keep workers busy, small enough for memory
    with ProcessPoolExecutor(options.workers) as pool:
        order = list(order)
        for lo in range(0, len(order), window):
            chunk = [jobs[i] for i in order[lo : lo + window]]
            loaded = pool.map(_load_job_image, [(j.image, *args) for j in chunk], chunksize=4)
            yield from zip(chunk, loaded)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        pass


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", file=sys.stderr)


# --- input tables --------------------------------------------------------------------


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
        data = orjson.loads(path.read_bytes())
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


def is_duplicate(key, seen, stats: Stats, record: str) -> bool:
    """Whether ``key`` is already in ``seen`` (counted as ``duplicate_id``); callers add it."""
    if key in seen:
        stats.hit("duplicate_id", record)
        return True
    return False


# --- command line --------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The flags every converter CLI shares."""
    parser.add_argument("--out", required=True, type=Path, help="output parquet file")
    parser.add_argument("--split", default="train", help="split name written to extra_info (default: train)")
    parser.add_argument("--limit", type=int, help="stop after this many rows, drawn at random (see --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit draw (default: 0)")
    parser.add_argument("--model-family", default="qwen2_5_vl", choices=frames.MODEL_FAMILIES)
    parser.add_argument(
        "--min-pixels",
        type=int,
        help=f"default {frames.DEFAULT_MIN_PIXELS}, {QWEN3_VL_MIN_PIXELS} for qwen3_vl (its processor's minimum)",
    )
    parser.add_argument("--max-pixels", type=int, default=frames.DEFAULT_MAX_PIXELS)
    parser.add_argument("--think", action="store_true", help="ask for <think>...</think><answer>...</answer>")
    parser.add_argument("--strict", action="store_true", help="bad input is an error naming the record")
    parser.add_argument("--workers", type=int, default=0, help="processes that read images (default: 0, inline)")
    parser.add_argument(
        "--image-store",
        default="original",
        choices=IMAGE_STORES,
        help="store the original file bytes, or the image already resized to the model input (smaller files)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    return ConvertOptions(
        split=args.split,
        model_family=args.model_family,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        think=args.think,
        limit=args.limit,
        seed=args.seed,
        strict=args.strict,
        workers=args.workers,
        image_store=args.image_store,
        progress=not args.no_progress,
    )


def print_summary(summary: dict, file=sys.stderr) -> None:
    """The end-of-run report: rows written and every rule hit."""
    print(
        f"{summary['source']}: wrote {summary['rows']} rows from {summary['records_visited']} of "
        f"{summary['records']} records to {summary['out']} ({summary['rows_per_second']} rows/s)",
        file=file,
    )
    for rule, info in summary["rules"].items():
        print(f"  {rule}: {info['count']}  [{info['rule']}]  e.g. {info['examples'][0]}", file=file)
    print(f"  summary: {summary_path(Path(summary['out']))}", file=file)


def run_cli(parser: argparse.ArgumentParser, argv, convert_fn: Callable[[argparse.Namespace, ConvertOptions], dict]) -> int:
    """Parse, convert, print the summary; bad input under --strict exits 2 with its message."""
    args = parser.parse_args(argv)
    try:
        summary = convert_fn(args, options_from_args(args))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0
