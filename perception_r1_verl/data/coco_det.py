"""COCO-format detection annotations -> detection rows.

Any COCO-format file works (category names come from its ``categories`` table, ids may
start at 0). Crowd regions (``iscrowd=1``) are not targets: they mark many objects at
once and COCO's own evaluation ignores detections on them. By default the prompt lists
every category of the file, as the paper does for COCO's 80; ``prompt_categories=
"present"`` lists only those in the image.
"""

from __future__ import annotations

import argparse
import reprlib
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from perception_r1_verl.data.cli_args import add_common_args, path_flags, run_cli
from perception_r1_verl.data.driver import Job, RowBuilder, convert
from perception_r1_verl.data.geometry import Geometry
from perception_r1_verl.data.options import ConvertOptions
from perception_r1_verl.data.rules import DataError, Stats
from perception_r1_verl.data.tables import is_duplicate, is_id, is_number, under_root
from perception_r1_verl.prompts import prompt_text

if TYPE_CHECKING:
    from perception_r1_verl.data.sample import SampleSources

PROMPT_CATEGORIES = ("all", "present")


def load_coco(annotations: Path, images: Path, stats: Stats) -> tuple[list[Job], dict[int, str]]:
    """Jobs (one per image, objects as ``(xyxy, category_id)``) and the category table."""
    try:
        data = orjson.loads(Path(annotations).read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        raise DataError(f"cannot read COCO annotations {annotations}: {e}") from e
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise DataError(f"{annotations} is not COCO format: needs 'images' and 'categories' lists")
    categories: dict[int, str] = {}
    for cat in data["categories"]:
        where = f"category {reprlib.repr(cat.get('id') if isinstance(cat, dict) else cat)}"
        if not (isinstance(cat, dict) and isinstance(cat.get("id"), int) and isinstance(cat.get("name"), str)):
            stats.hit("malformed_record", where)
        elif not is_duplicate(cat["id"], categories, stats, where):
            categories[cat["id"]] = cat["name"]
    jobs: dict[int, Job] = {}
    repeated: set[int] = set()
    for img in data["images"]:
        job = _image_job(img, Path(images), stats)
        if job is not None and is_duplicate(int(job.source_id), jobs, stats, job.record):
            repeated.add(int(job.source_id))
        elif job is not None:
            jobs[int(job.source_id)] = job
    # Annotations name their image by id alone: under a repeated id they cannot be told
    # apart, so no image of that id becomes a row (the first one is counted here).
    for image_id in repeated:
        stats.hit("duplicate_id", f"{jobs.pop(image_id).record}: its id is repeated")
    seen_ann: set = set()
    for ann in data.get("annotations") or []:
        if not (isinstance(ann, dict) and is_id(ann.get("image_id")) and ann["image_id"] in repeated):
            _add_annotation(ann, jobs, categories, seen_ann, stats)
    return list(jobs.values()), categories


def _image_job(img, images: Path, stats: Stats) -> Job | None:
    ok = (
        isinstance(img, dict)
        and isinstance(img.get("id"), int)
        and isinstance(img.get("file_name"), str)
        and all(isinstance(img.get(k), int) and img[k] > 0 for k in ("width", "height"))
    )
    if not ok:
        stats.hit("malformed_record", f"image {reprlib.repr(img.get('id') if isinstance(img, dict) else img)}")
        return None
    path = under_root(images, img["file_name"])
    if path is None:
        stats.hit("image_outside_root", f"image id {img['id']} ({img['file_name']})")
        return None
    return Job(
        source_id=str(img["id"]),
        image=path,
        record=f"image id {img['id']} ({img['file_name']})",
        payload=[],
        expected_size=(img["width"], img["height"]),
    )


def _add_annotation(ann, jobs: dict[int, Job], categories: dict, seen: set, stats: Stats) -> None:
    if not isinstance(ann, dict):
        stats.hit("malformed_record", f"annotation {reprlib.repr(ann)}")
        return
    where = f"annotation id {reprlib.repr(ann.get('id'))} (image id {reprlib.repr(ann.get('image_id'))})"
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(is_number, bbox))):
        stats.hit("malformed_record", f"{where}: bbox {reprlib.repr(bbox)}")
        return
    if not all(is_id(ann.get(k)) for k in ("id", "image_id", "category_id")):  # a list or dict id
        stats.hit("malformed_record", f"{where}: ids must be integers or strings")
        return
    if is_duplicate(ann.get("id"), seen, stats, where):
        return
    seen.add(ann.get("id"))
    if ann.get("image_id") not in jobs:
        stats.hit("unknown_image", where)
    elif ann.get("category_id") not in categories:
        stats.hit("unknown_category", f"{where}: category id {ann.get('category_id')!r}")
    elif ann.get("iscrowd"):
        stats.hit("crowd_ignored", where)
    else:
        x, y, w, h = bbox
        jobs[ann["image_id"]].payload.append(([x, y, x + w, y + h], ann["category_id"], where))


def detection_builder(
    categories: dict[int, str],
    options: ConvertOptions,
    prompt_categories: str = "all",
    keep_empty: bool = False,
    data_source: str = "coco",
) -> RowBuilder:
    """Detection rows of COCO image jobs, for :func:`convert`."""
    if prompt_categories not in PROMPT_CATEGORIES:
        raise ValueError(f"prompt_categories must be one of {PROMPT_CATEGORIES}")
    all_names = list(categories.values())

    def answer(job: Job, geo: Geometry, stats: Stats):
        objects, present = [], set()
        for xyxy, cat_id, where in job.payload:
            box = geo.box(xyxy, stats, where)
            if box is not None:
                objects.append({"bbox_2d": box, "label": categories[cat_id]})
                present.add(cat_id)
        if not objects:
            if not keep_empty:
                stats.hit("no_objects", job.record)
                return None
            stats.hit("empty_image_kept", job.record)
        names = all_names if prompt_categories == "all" else [categories[c] for c in categories if c in present]
        if not names:  # an empty image in "present" mode still needs something to ask for
            names = all_names
        prompt = prompt_text("detection", options.model_family, categories=names, think=options.think)
        return prompt, {"objects": objects, "frame": list(geo.frame), "categories": names}

    return RowBuilder("detection", data_source, answer)


def convert_coco(
    annotations: Path,
    images: Path | None,
    out: Path,
    options: ConvertOptions | None = None,
    *,
    prompt_categories: str = "all",
    keep_empty: bool = False,
    data_source: str = "coco",
) -> dict:
    """Convert a COCO-format detection set to ``out``; returns the summary.

    ``images`` defaults to the annotation file's folder (``file_name`` is joined to it).
    """
    options = options or ConvertOptions()
    stats = Stats(options.strict)
    images = Path(images) if images is not None else Path(annotations).parent
    jobs, categories = load_coco(annotations, images, stats)
    builder = detection_builder(categories, options, prompt_categories, keep_empty, data_source)
    return convert(jobs, builder, out, options, stats)


# The training recipe's sources (perception_r1_verl.recipe.data): the release under DATASET_ROOT
# (release_paths), and the offline sample.
RELEASE_SPLITS = {"train": "train2017", "val": "val2017"}


def release_paths(root: Path, name: str) -> dict[str, Path]:
    """The converter's inputs for COCO 2017's ``name`` (``train2017``, ``val2017``) under
    ``root``: the one description of the layout, read by the recipe and the eval suite.

    >>> release_paths(Path("/d"), "val2017")
    {'annotations': PosixPath('/d/annotations/instances_val2017.json'), 'images': PosixPath('/d/val2017')}
    """
    return {"annotations": root / "annotations" / f"instances_{name}.json", "images": root / name}


def release_args(split: str, root: Path) -> list[str]:
    """Flags for ``split`` of COCO 2017 laid out under ``root``.

    >>> release_args("val", Path("/d"))
    ['--annotations', '/d/annotations/instances_val2017.json', '--images', '/d/val2017']
    """
    return path_flags(release_paths(root, RELEASE_SPLITS[split]))


def sample_args(sources: SampleSources) -> list[str]:
    """Flags for the offline sample (``data.sample.make_sample_sources``)."""
    return ["--annotations", str(sources.annotations), "--images", str(sources.images)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="perception-r1-prep coco_det",
        description="COCO-format detection annotations -> verl parquet (task 'detection').",
    )
    p.add_argument(
        "--annotations", required=True, type=Path, help="instances_{train,val}2017.json or any COCO-format file"
    )
    p.add_argument(
        "--images", type=Path, help="folder the file_name entries are relative to (default: the json's folder)"
    )
    p.add_argument(
        "--prompt-categories", default="all", choices=PROMPT_CATEGORIES, help="categories listed in the prompt"
    )
    p.add_argument("--keep-empty", action="store_true", help="keep images without objects as negatives")
    p.add_argument("--data-source", default="coco", help="data_source column (default: coco)")
    add_common_args(p)
    return p


def main(argv=None) -> int:
    def run(args, options):
        return convert_coco(
            args.annotations,
            args.images,
            args.out,
            options,
            prompt_categories=args.prompt_categories,
            keep_empty=args.keep_empty,
            data_source=args.data_source,
        )

    return run_cli(build_parser(), argv, run)
