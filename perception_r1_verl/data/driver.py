"""The shared conversion driver: :class:`Job` in, parquet rows out.

A converter turns its source into a list of :class:`Job` (one per output row, holding
only annotations and an image path, so listing a whole dataset is cheap) and a
:class:`RowBuilder` (its task, ``data_source`` and the prompt and ground truth of a job);
then :func:`convert` streams them: images are read and checked (optionally in worker
processes, in bounded windows), ground truth is mapped into the model's answer frame,
and rows go to a parquet file one row group at a time. Memory is bounded by the window
and the row group, not by the number of images.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from perception_r1_verl.data.geometry import Geometry
from perception_r1_verl.data.images import LoadedImage, load_image
from perception_r1_verl.data.options import ConvertOptions
from perception_r1_verl.data.rows import ParquetSink, make_row
from perception_r1_verl.data.rules import Stats


@dataclass
class Job:
    """One output row before its image is read: annotations in original pixels."""

    source_id: str
    image: Path  # or anything with read_bytes(): a TableImage of a parquet cell
    record: str  # how messages name it, e.g. "image id 42 (a.jpg)"
    payload: object
    expected_size: tuple[int, int] | None = None


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
        if img.converted:
            stats.hit("image_converted", f"{job.record}: mode {img.converted}")
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
    rows are written. Without any row, no parquet is written (the summary says why).
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
        if sink.count:
            sink.close()
        else:  # an empty split is an error (see cli_args.run_cli), never a file a later run picks up
            sink.abort()
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


def _load_job_image(args) -> LoadedImage:  # a picklable function for the worker pool
    return load_image(*args)


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
