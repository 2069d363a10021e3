"""Page OCR tables -> OCR rows.

Layouts (detected from the file, or chosen with ``layout``):

- ``fox``: the Fox benchmark's page OCR files, the paper's PageOCR (``en_page_ocr.json``,
  ``cn_page_ocr.json`` with their images in ``en_pdf_png/`` / ``cn_pdf_png/``): a JSON list
  of ``{"image", "conversations": [{"from": "human", ...}, {"from": "gpt", "value": text}]}``;
- ``easyr1``: ``images`` (one image), ``problem``, ``answer`` (the transcript) tables;
- ``jsonl``: this package's ``{"image": path, "text": transcript}`` (optional ``id``).

The transcript is kept exactly as given; how it is compared is the OCR reward's business.
An optional ``id`` becomes ``source_id`` (else the image path, or the table row).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from perception_r1_verl.data.cli_args import add_common_args, path_flags, run_cli
from perception_r1_verl.data.driver import Job, RowBuilder, convert
from perception_r1_verl.data.geometry import Geometry
from perception_r1_verl.data.layouts import Layout, as_paths, image_key, keep, one_image, read_layout, with_root
from perception_r1_verl.data.options import ConvertOptions
from perception_r1_verl.data.rules import Stats
from perception_r1_verl.data.tables import pick
from perception_r1_verl.prompts import prompt_text

if TYPE_CHECKING:
    from perception_r1_verl.data.sample import SampleSources


class Page(NamedTuple):
    id: object  # None: named by its image path
    image: object  # a path relative to the image folder, or a TableImage
    text: str


# Layout readers: one record -> its page, or None when the record is malformed.


def _read_own(rec: dict) -> Page | None:
    image, text = pick(rec, "image", "image_path", "file_name"), pick(rec, "text", "transcript")
    return Page(rec.get("id"), image, text) if isinstance(image, str) and isinstance(text, str) else None


def _read_fox(rec: dict) -> Page | None:
    image, turns = rec.get("image"), rec.get("conversations")
    answers = (
        [t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"]
        if isinstance(turns, list)
        else []
    )
    if not (isinstance(image, str) and len(answers) == 1 and isinstance(answers[0], str)):
        return None
    return Page(None, image, answers[0])


def _read_easyr1(rec: dict) -> Page | None:
    image, text = one_image(rec.get("images")), rec.get("answer")
    return Page(rec.get("id"), image, text) if image is not None and isinstance(text, str) else None


LAYOUTS = (
    Layout(
        "fox",
        (("image",), ("conversations",)),
        "ucaslcl/Fox README @82f720c (focus_benchmark_test/{en,cn}_page_ocr.json + {en,cn}_pdf_png/); "
        "read by linkangheng/PR1 eval/evaluate_ocr.py @48d5558 (ground truth conversations[1].value)",
        _read_fox,
    ),
    Layout(
        "easyr1",
        (("images",), ("answer",)),
        "hiyouga/EasyR1 verl/utils/dataset.py @b44b311 (images, problem, answer); answer the transcript",
        _read_easyr1,
        image_columns=("images",),
    ),
    Layout(
        "jsonl",
        (("image", "image_path", "file_name"), ("text", "transcript")),
        "this package's export: {image, text} (optional id)",
        _read_own,
    ),
)


def load_page_ocr(path, images: Path, stats: Stats, layout: str | None = None) -> list[Job]:
    """One job per page with an image and a non-empty transcript."""
    jobs, seen = [], set()
    for where, page in read_layout(path, LAYOUTS, stats, layout):
        source_id = str(page.id) if page.id is not None else image_key(page.image, where)
        image = with_root(page.image, images, stats, where)
        if image is not None and keep(page.text.strip(), source_id, seen, stats, where):
            jobs.append(Job(source_id, image, f"{where} ({page.image})", page.text))
    return jobs


def default_images(table: Path) -> Path:
    """Where a table's image paths start: the Fox benchmark's ``en_page_ocr.json`` names
    images in ``en_pdf_png/`` beside it (likewise ``cn``); anything else, the table's folder.

    >>> default_images(Path("/nonexistent/en_page_ocr.json"))
    PosixPath('/nonexistent')
    """
    table = Path(table)
    fox = table.parent / f"{table.name.split('_')[0]}_pdf_png"
    return fox if table.name.endswith("_page_ocr.json") and fox.is_dir() else table.parent


def ocr_builder(options: ConvertOptions, data_source: str = "page_ocr") -> RowBuilder:
    """OCR rows of page jobs, for :func:`convert`."""

    def answer(job: Job, geo: Geometry, stats: Stats):
        return prompt_text("ocr", options.model_family, think=options.think), {"text": job.payload}

    return RowBuilder("ocr", data_source, answer)


def convert_page_ocr(
    jsonl,
    images: Path | None,
    out: Path,
    options: ConvertOptions | None = None,
    *,
    data_source: str = "page_ocr",
    layout: str | None = None,
) -> dict:
    """Convert OCR tables (one path or several) to ``out``; image paths are relative to
    ``images`` (default: see :func:`default_images` of the first table)."""
    options = options or ConvertOptions()
    stats = Stats(options.strict)
    tables = as_paths(jsonl)
    root = Path(images) if images is not None else default_images(tables[0])
    jobs = load_page_ocr(tables, root, stats, layout)
    return convert(jobs, ocr_builder(options, data_source), out, options, stats)


# The training recipe's sources (perception_r1_verl.recipe.data): the release under
# DATASET_ROOT (release_paths), and the offline sample.
def release_paths(root: Path, split: str) -> dict[str, Path]:
    """The converter's inputs for ``split``: ``<split>.jsonl`` of ``{"image", "text"}``
    under ``root``, beside the images; the one description of the layout, read by the
    recipe and the eval suite.

    >>> release_paths(Path("/d"), "en")
    {'jsonl': PosixPath('/d/en.jsonl')}
    """
    return {"jsonl": root / f"{split}.jsonl"}


def release_args(split: str, root: Path) -> list[str]:
    """Flags for ``split`` of a page-OCR release laid out under ``root``.

    >>> release_args("val", Path("/d"))
    ['--jsonl', '/d/val.jsonl']
    """
    return path_flags(release_paths(root, split))


def sample_args(sources: SampleSources) -> list[str]:
    """Flags for the offline sample (``data.sample.make_sample_sources``)."""
    return ["--jsonl", str(sources.ocr), "--images", str(sources.images)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="perception-r1-prep page_ocr", description="Page OCR tables -> verl parquet (task 'ocr')."
    )
    p.add_argument(
        "--table",
        "--jsonl",
        dest="table",
        nargs="+",
        required=True,
        type=Path,
        help="tables (.jsonl/.json/.parquet): Fox {en,cn}_page_ocr.json, EasyR1 images/problem/answer, or {image, text}",
    )
    p.add_argument(
        "--layout", choices=[x.name for x in LAYOUTS], help="the tables' layout (default: detected from each file)"
    )
    p.add_argument(
        "--images",
        type=Path,
        help="folder image paths are relative to (default: {en,cn}_pdf_png/ beside a Fox file, else the table's folder)",
    )
    p.add_argument("--data-source", default="page_ocr", help="data_source column (default: page_ocr)")
    add_common_args(p)
    return p


def main(argv=None) -> int:
    return run_cli(
        build_parser(),
        argv,
        lambda a, o: convert_page_ocr(a.table, a.images, a.out, o, data_source=a.data_source, layout=a.layout),
    )
