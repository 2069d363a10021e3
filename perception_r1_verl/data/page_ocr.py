"""Page OCR: a jsonl of ``{"image": path, "text": transcript}`` -> OCR rows.

An optional ``id`` becomes ``source_id`` (else the image path). The transcript is kept
exactly as given; how it is compared is the OCR reward's business.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from perception_r1_verl.data.common import (
    ConvertOptions,
    Geometry,
    Job,
    Stats,
    add_common_args,
    convert,
    is_duplicate,
    make_row,
    pick,
    read_table,
    run_cli,
)
from perception_r1_verl.prompts import prompt_text


def load_page_ocr(path: Path, images: Path, stats: Stats) -> list[Job]:
    """One job per line with an image and a non-empty transcript."""
    jobs, seen = [], set()
    for where, rec in read_table(path, stats):
        image, text = pick(rec, "image", "image_path", "file_name"), pick(rec, "text", "transcript")
        if not (isinstance(image, str) and isinstance(text, str)):
            stats.hit("malformed_record", where)
            continue
        if not text.strip():
            stats.hit("empty_text", where)
            continue
        source_id = str(rec["id"]) if rec.get("id") is not None else image
        if is_duplicate(source_id, seen, stats, where):
            continue
        seen.add(source_id)
        jobs.append(Job(source_id, Path(images) / image, f"{where} ({image})", text))
    return jobs


def ocr_builder(options: ConvertOptions, data_source: str = "page_ocr"):
    """The ``build_row`` for :func:`convert` turning a page into an OCR row."""

    def build(job: Job, geo: Geometry, image: bytes, index: int, stats: Stats):
        return make_row(
            data_source=data_source,
            task="ocr",
            prompt=prompt_text("ocr", options.model_family, think=options.think),
            image=image,
            geometry=geo,
            ground_truth={"text": job.payload},
            source_id=job.source_id,
            index=index,
            options=options,
        )

    return build


def convert_page_ocr(
    jsonl: Path, images: Path | None, out: Path, options: ConvertOptions | None = None, *, data_source: str = "page_ocr"
) -> dict:
    """Convert an OCR jsonl to ``out``; image paths are relative to ``images`` (default: the jsonl's folder)."""
    options = options or ConvertOptions()
    stats = Stats(options.strict)
    jobs = load_page_ocr(jsonl, Path(images) if images is not None else Path(jsonl).parent, stats)
    return convert(jobs, ocr_builder(options, data_source), out, options, stats, data_source)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="data_prep/page_ocr.py", description="Page OCR jsonl -> verl parquet (task 'ocr').")
    p.add_argument("--jsonl", required=True, type=Path, help='jsonl of {"image": path, "text": transcript}')
    p.add_argument("--images", type=Path, help="folder image paths are relative to (default: the jsonl's folder)")
    p.add_argument("--data-source", default="page_ocr", help="data_source column (default: page_ocr)")
    add_common_args(p)
    return p


def main(argv=None) -> int:
    return run_cli(
        build_parser(), argv, lambda a, o: convert_page_ocr(a.jsonl, a.images, a.out, o, data_source=a.data_source)
    )
