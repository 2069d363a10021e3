"""RefCOCO / RefCOCO+ / RefCOCOg -> grounding rows, one per referring expression.

Two inputs:

- the refer toolkit's files: ``refs(unc).p`` / ``refs(umd).p`` / ``refs(google).p`` with
  the ``instances.json`` beside them and COCO train2014 images. The ``.p`` files are
  pickles, read by :mod:`.refer` (:func:`~.refer.safe_load_pickle` builds only plain
  containers and scalars: a downloaded file cannot run code);
- a table in one of the layouts peers publish (see :func:`layouts`; detected from the
  file, or chosen with ``layout``): VLM-R1's ``rec_jsons_processed`` files, lmms-lab's
  RefCOCO/RefCOCOplus/RefCOCOg parquet (images embedded, one file per split shard),
  EasyR1-style ``images``/``problem``/``answer`` tables whose answer is a box, and this
  package's jsonl of ``{"image": path, "expression": text, "bbox": [x1, y1, x2, y2]}``
  (optional ``id``, ``split``; ``--bbox-format xywh`` for COCO-style boxes).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import orjson

from perception_r1_verl.data.cli_args import add_common_args, path_flags, run_cli
from perception_r1_verl.data.driver import Job, RowBuilder, convert
from perception_r1_verl.data.geometry import Geometry
from perception_r1_verl.data.layouts import (
    Layout,
    as_paths,
    image_key,
    is_box,
    keep,
    one_image,
    read_layout,
    strip_image_tokens,
    with_root,
    xywh_to_xyxy,
)
from perception_r1_verl.data.options import ConvertOptions
from perception_r1_verl.data.refer import load_refer
from perception_r1_verl.data.rules import DataError, Stats
from perception_r1_verl.data.tables import pick
from perception_r1_verl.prompts import prompt_text

if TYPE_CHECKING:
    from perception_r1_verl.data.sample import SampleSources

DATASETS = ("refcoco", "refcoco+", "refcocog")
BBOX_FORMATS = ("xyxy", "xywh")


class Ref(NamedTuple):
    """One referring expression as a layout reader returns it (box in original pixels, xyxy)."""

    id: object  # None: the converter names it image:expression
    image: object  # a path relative to the image folder, or a TableImage
    text: str
    box: list
    split: str | None = None


# Layout readers: one record -> its expressions, or None when the record is malformed.


def _read_own(rec: dict, bbox_format: str = "xyxy") -> list[Ref] | None:
    image, text, bbox = (
        pick(rec, "image", "image_path", "file_name"),
        pick(rec, "expression", "sent", "text"),
        rec.get("bbox"),
    )
    if not (isinstance(image, str) and isinstance(text, str) and is_box(bbox)):
        return None
    return [Ref(rec.get("id"), image, text, xywh_to_xyxy(bbox) if bbox_format == "xywh" else bbox, rec.get("split"))]


def _read_vlm_r1(rec: dict) -> list[Ref] | None:
    # ``solution`` is the COCO box with 1 added to x2 and y2 (VLM-R1's IoU counts inclusive
    # pixels); ``bbox_list`` holds the COCO box itself, so it is preferred when present.
    image, text, boxes = rec.get("image"), rec.get("normal_caption"), rec.get("bbox_list")
    box = (
        boxes[0]
        if isinstance(boxes, list) and len(boxes) == 1 and is_box(boxes[0])
        else answer_box(rec.get("solution"))
    )
    if not (isinstance(image, str) and isinstance(text, str) and box is not None):
        return None
    return [Ref(None, image, text, list(box))]


# VLM-R1's REC question around the expression (the ``problem`` of its json files).
VLM_R1_QUESTION = "Please provide the bounding box coordinate of the region this sentence describes: "


def _read_vlm_r1_chat(rec: dict) -> list[Ref] | None:
    # The jsonl copies read by VLM-R1's grpo_jsonl.py: the human turn is the question
    # (``<image>`` + VLM_R1_QUESTION + expression), the gpt turn the box as JSON text.
    turns = rec.get("conversations")
    if not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, dict) for t in turns)):
        return None
    question, box = turns[0].get("value"), answer_box(turns[1].get("value"))
    text = rec.get("normal_caption")
    if not isinstance(text, str) and isinstance(question, str):
        question = strip_image_tokens(question)
        text = question[len(VLM_R1_QUESTION) :].removesuffix(".") if question.startswith(VLM_R1_QUESTION) else None
    if not (isinstance(rec.get("image"), str) and isinstance(text, str) and box is not None):
        return None
    return [Ref(None, rec["image"], text, box)]


def _read_lmms(rec: dict) -> list[Ref] | None:
    image, texts, bbox, qid = one_image(rec.get("image")), rec.get("answer"), rec.get("bbox"), rec.get("question_id")
    if not (image is not None and isinstance(texts, list) and all(isinstance(t, str) for t in texts) and is_box(bbox)):
        return None
    return [Ref(None if qid is None else f"{qid}/{k}", image, t, xywh_to_xyxy(bbox)) for k, t in enumerate(texts)]


def _read_easyr1(rec: dict, bbox_format: str = "xyxy") -> list[Ref] | None:
    image, problem, box = one_image(rec.get("images")), rec.get("problem"), answer_box(rec.get("answer"))
    if image is None or not isinstance(problem, str) or box is None:
        return None
    return [Ref(rec.get("id"), image, strip_image_tokens(problem), xywh_to_xyxy(box) if bbox_format == "xywh" else box)]


def answer_box(v) -> list | None:
    """A box given as four numbers, or as their JSON text, optionally in ``<answer>`` tags.

    >>> answer_box("<answer> [1, 2.5, 30, 40] </answer>"), answer_box([1, 2, 3, 4]), answer_box("[1, 2]")
    ([1, 2.5, 30, 40], [1, 2, 3, 4], None)
    """
    if isinstance(v, str):
        try:
            v = orjson.loads(v.replace("<answer>", "").replace("</answer>", "").strip())
        except orjson.JSONDecodeError:
            return None
    return list(v) if is_box(v) else None


def layouts(bbox_format: str = "xyxy") -> tuple[Layout, ...]:
    """The layouts :func:`load_table` reads, in the order they are tried."""
    return (
        Layout(
            "lmms_lab",
            (("image",), ("answer",), ("bbox",), ("question_id",)),
            "lmms-lab/RefCOCO dataset card (hub commit e15256e): question_id, image, question, answer "
            "(list), segmentation, bbox (xywh), iscrowd, file_name; read by EvolvingLMMs-Lab/lmms-eval "
            "lmms_eval/tasks/refcoco/utils_rec.py @75571cf",
            _read_lmms,
            image_columns=("image",),
        ),
        Layout(
            "vlm_r1",
            (("image",), ("problem",), ("solution",), ("normal_caption",)),
            "om-ai-lab/VLM-R1 rec_jsons_processed (README @90052f4; record in issue #11), read by "
            "src/eval/test_rec_r1.py",
            _read_vlm_r1,
        ),
        Layout(
            "vlm_r1_jsonl",
            (("image",), ("conversations",)),
            "om-ai-lab/VLM-R1 jsonl copies (issue #237), read by src/open-r1-multimodal/src/open_r1/"
            "grpo_jsonl.py @90052f4 (conversations[0] the question, conversations[1] the box as JSON)",
            _read_vlm_r1_chat,
        ),
        Layout(
            "easyr1",
            (("images",), ("problem",), ("answer",)),
            "hiyouga/EasyR1 verl/utils/dataset.py @b44b311 (image_key images, prompt_key problem, "
            "answer_key answer); answer a box",
            partial(_read_easyr1, bbox_format=bbox_format),
            image_columns=("images",),
        ),
        Layout(
            "jsonl",
            (("image", "image_path", "file_name"), ("expression", "sent", "text"), ("bbox",)),
            "this package's export: {image, expression, bbox} (optional id, split)",
            partial(_read_own, bbox_format=bbox_format),
        ),
    )


LAYOUTS = tuple(x.name for x in layouts())


def load_table(
    paths, images: Path, split: str | None, bbox_format: str, stats: Stats, layout: str | None = None
) -> list[Job]:
    """One job per expression of the tables ``paths``; expressions whose ``split`` differs are left out."""
    if bbox_format not in BBOX_FORMATS:
        raise ValueError(f"bbox_format must be one of {BBOX_FORMATS}")
    jobs, seen = [], set()
    for where, refs in read_layout(paths, layouts(bbox_format), stats, layout):
        for ref in refs:
            if split is not None and ref.split not in (None, split):
                continue
            text = ref.text.strip()
            source_id = str(ref.id) if ref.id is not None else f"{image_key(ref.image, where)}:{text}"
            image = with_root(ref.image, images, stats, where)
            if image is not None and keep(text, source_id, seen, stats, where):
                jobs.append(Job(source_id, image, f"{where} ({ref.image})", (ref.box, text)))
    return jobs


def grounding_builder(options: ConvertOptions, data_source: str) -> RowBuilder:
    """Grounding rows of referring-expression jobs, for :func:`convert`."""

    def answer(job: Job, geo: Geometry, stats: Stats):
        xyxy, expression = job.payload
        box = geo.box(xyxy, stats, job.record)
        if box is None:
            return None
        prompt = prompt_text("grounding", options.model_family, expression=expression, think=options.think)
        return prompt, {"bbox_2d": box, "frame": list(geo.frame)}

    return RowBuilder("grounding", data_source, answer)


def convert_refcoco(
    out: Path,
    options: ConvertOptions | None = None,
    *,
    refs: Path | None = None,
    instances: Path | None = None,
    jsonl=None,
    images: Path | None = None,
    dataset: str = "refcoco",
    bbox_format: str = "xyxy",
    filter_split: bool = True,
    layout: str | None = None,
) -> dict:
    """Convert refer-toolkit files (``refs`` + ``instances``) or tables (``jsonl``: one path
    or several, in any layout of :func:`layouts`) to ``out``.

    With ``filter_split`` (the default) only records of ``options.split`` are converted
    (refer splits: train, val, testA, testB, test; records without a split are kept).
    Table image paths are relative to ``images`` (default: the first table's folder).
    """
    options = options or ConvertOptions()
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}")
    if (refs is None) == (jsonl is None) or (refs is not None and (instances is None or images is None)):
        raise ValueError("give either refs, instances and images, or jsonl")
    stats = Stats(options.strict)
    split = options.split if filter_split else None
    if refs is not None:
        jobs = load_refer(refs, instances, images, split, stats)
    else:
        tables = as_paths(jsonl)
        root = Path(images) if images is not None else tables[0].parent
        jobs = load_table(tables, root, split, bbox_format, stats, layout)
    return convert(jobs, grounding_builder(options, dataset), out, options, stats)


# The training recipe's sources (perception_r1_verl.recipe.data): the refer toolkit's data/ folder
# under DATASET_ROOT (release_paths; the split is chosen by --split), and the offline sample.
def release_paths(root: Path, dataset: str = "refcoco", refs: str = "refs(unc).p") -> dict[str, Path]:
    """The converter's inputs for ``dataset`` (``refcoco``, ``refcoco+``, ``refcocog``) in the
    refer toolkit's data/ folder ``root``, its images COCO train2014: the one description of
    the layout, read by the recipe and the eval suite.

    >>> release_paths(Path("/d"))["images"]
    PosixPath('/d/images/mscoco/images/train2014')
    """
    return {
        "refs": root / dataset / refs,
        "instances": root / dataset / "instances.json",
        "images": root / "images" / "mscoco" / "images" / "train2014",
    }


def release_args(split: str, root: Path) -> list[str]:
    """Flags for RefCOCO (unc) from the refer toolkit's layout under ``root``; ``split`` goes to ``--split``.

    >>> release_args("val", Path("/d"))[:2]
    ['--refs', '/d/refcoco/refs(unc).p']
    """
    return path_flags(release_paths(root))


def sample_args(sources: SampleSources) -> list[str]:
    """Flags for the offline sample (``data.sample.make_sample_sources``)."""
    return ["--jsonl", str(sources.grounding), "--images", str(sources.images)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="perception-r1-prep refcoco",
        description="RefCOCO/RefCOCO+/RefCOCOg -> verl parquet (task 'grounding'), one row per expression.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--refs", type=Path, help="refer toolkit refs(unc).p / refs(umd).p / refs(google).p")
    src.add_argument(
        "--table",
        "--jsonl",
        dest="table",
        nargs="+",
        type=Path,
        help="tables (.jsonl/.json/.parquet) in a layout of --layout, e.g. every shard of an lmms-lab split",
    )
    p.add_argument("--layout", choices=LAYOUTS, help="the tables' layout (default: detected from each file)")
    p.add_argument("--instances", type=Path, help="the instances.json beside the refs file (default: its folder)")
    p.add_argument(
        "--images",
        type=Path,
        help="COCO train2014 folder for --refs (required), else the folder table image paths are relative to "
        "(default: the table's folder; VLM-R1 paths start with train2014/, so give the folder above it)",
    )
    p.add_argument(
        "--dataset",
        default=None,
        choices=DATASETS,
        help="data_source (default: from the file or folder name, else refcoco)",
    )
    p.add_argument(
        "--bbox-format", default="xyxy", choices=BBOX_FORMATS, help="box format of jsonl/easyr1 tables (default: xyxy)"
    )
    p.add_argument("--all-splits", action="store_true", help="convert every split, not only --split")
    add_common_args(p)
    p.set_defaults(split=None)  # resolved in main: from the table's file name, else train
    return p


def dataset_name(path: Path | None) -> str:
    """The dataset a file belongs to, from its name or its folders' names (else ``refcoco``).

    >>> [dataset_name(Path(p)) for p in ("refcoco+/refs(unc).p", "rec/refcocop_val.json",
    ...  "RefCOCOg/data/val-00000-of-00001.parquet", "x/refcoco_train.jsonl", "mine.jsonl")]
    ['refcoco+', 'refcoco+', 'refcocog', 'refcoco', 'refcoco']
    """
    for part in reversed(Path(path).parts if path is not None else ()):
        name = part.lower()
        if name.startswith("refcocog"):
            return "refcocog"
        if name.startswith(("refcoco+", "refcocop")):  # VLM-R1 writes refcocop, lmms-lab RefCOCOplus
            return "refcoco+"
        if name.startswith("refcoco"):
            return "refcoco"
    return "refcoco"


_SPLIT_IN_NAME = re.compile(r"(?:^|_)(train|val|testA|testB|test)(?:-\d+-of-\d+)?\.(?:jsonl|json|parquet)$")


def split_from_name(path: Path) -> str | None:
    """The split a published file is named after: lmms-lab shards, VLM-R1 files.

    >>> split_from_name(Path("testA-00000-of-00001.parquet")), split_from_name(Path("refcocog_val.json"))
    ('testA', 'val')
    >>> split_from_name(Path("refs.jsonl")) is None
    True
    """
    m = _SPLIT_IN_NAME.search(Path(path).name)
    return m.group(1) if m else None


def main(argv=None) -> int:
    def run(args, options):
        first = args.refs or args.table[0]
        if args.split is None:
            options = replace(options, split=(split_from_name(first) if args.table else None) or "train")
        if args.refs and args.images is None:
            raise DataError("--refs needs --images (the COCO train2014 folder)")
        instances = args.instances or (args.refs.parent / "instances.json" if args.refs else None)
        return convert_refcoco(
            args.out,
            options,
            refs=args.refs,
            instances=instances,
            jsonl=args.table,
            images=args.images,
            dataset=args.dataset or dataset_name(first),
            bbox_format=args.bbox_format,
            filter_split=not args.all_splits,
            layout=args.layout,
        )

    return run_cli(build_parser(), argv, run)
