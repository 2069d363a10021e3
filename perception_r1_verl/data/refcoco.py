"""RefCOCO / RefCOCO+ / RefCOCOg -> grounding rows, one per referring expression.

Two inputs:

- the refer toolkit's files: ``refs(unc).p`` / ``refs(umd).p`` / ``refs(google).p`` with
  the ``instances.json`` beside them and COCO train2014 images. The ``.p`` files are
  pickles, so they are read with :func:`safe_load_pickle`, which builds only plain
  containers and scalars: a downloaded file cannot run code;
- a jsonl of ``{"image": path, "expression": text, "bbox": [x1, y1, x2, y2]}`` (optional
  ``id``, ``split``; ``--bbox-format xywh`` for COCO-style boxes), the exported copies
  people share.
"""

from __future__ import annotations

import argparse
import io
import pickle
from pathlib import Path

import orjson

from perception_r1_verl.data.common import (
    ConvertOptions,
    DataError,
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

DATASETS = ("refcoco", "refcoco+", "refcocog")
BBOX_FORMATS = ("xyxy", "xywh")


class _PlainUnpickler(pickle.Unpickler):
    """Admits no class or function at all: dicts, lists, tuples, sets, str, bytes, numbers."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is allowed")


def safe_load_pickle(path: Path):
    """Load a pickle of plain containers and scalars; anything else raises UnpicklingError.

    Python 2 byte strings (the refer toolkit's files) are decoded as latin-1, which never
    fails and is exact for their ASCII text.

    >>> import pickle, os
    >>> safe_load_pickle(io.BytesIO(pickle.dumps([{"a": (1, 2.0, None)}], protocol=2)))
    [{'a': (1, 2.0, None)}]
    >>> safe_load_pickle(io.BytesIO(pickle.dumps(os.getcwd)))
    Traceback (most recent call last):
    ...
    _pickle.UnpicklingError: refusing to load posix.getcwd: only plain data is allowed
    """
    if isinstance(path, io.IOBase):
        return _PlainUnpickler(path, encoding="latin1").load()
    with open(path, "rb") as f:
        return _PlainUnpickler(f, encoding="latin1").load()


def _coco_index(instances: Path, stats: Stats) -> tuple[dict, dict]:
    try:
        data = orjson.loads(Path(instances).read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        raise DataError(f"cannot read {instances}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{instances} is not COCO format")
    images = {i["id"]: i for i in data["images"] if isinstance(i, dict) and "id" in i}
    anns = {a["id"]: a for a in data.get("annotations") or [] if isinstance(a, dict) and "id" in a}
    return images, anns


def load_refer(refs: Path, instances: Path, images: Path, split: str | None, stats: Stats) -> list[Job]:
    """One job per sentence of the refs in ``split`` (None: every split)."""
    try:
        ref_list = safe_load_pickle(refs)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"cannot read refs {refs}: {e}") from e
    if not isinstance(ref_list, list):
        raise DataError(f"{refs} does not hold a list of refs")
    coco_images, anns = _coco_index(instances, stats)
    jobs, seen = [], set()
    for ref in ref_list:
        if not isinstance(ref, dict):
            stats.hit("malformed_record", f"ref {ref!r:.80}")
            continue
        if split is not None and ref.get("split") != split:
            continue
        where = f"ref id {ref.get('ref_id')}"
        img, ann = coco_images.get(ref.get("image_id")), anns.get(ref.get("ann_id"))
        bbox = ann.get("bbox") if ann else None
        if img is None or not (isinstance(bbox, list) and len(bbox) == 4 and all(map(is_number, bbox))):
            stats.hit("malformed_record", f"{where}: image {ref.get('image_id')} / annotation {ref.get('ann_id')}")
            continue
        x, y, w, h = bbox
        for sent in ref.get("sentences") or []:
            sent_id = sent.get("sent_id") if isinstance(sent, dict) else None
            text = pick(sent, "sent", "raw") if isinstance(sent, dict) else None
            record = f"{where} sentence {sent_id}"
            if not isinstance(text, str):
                stats.hit("malformed_record", record)
            elif not text.strip():
                stats.hit("empty_text", record)
            elif not is_duplicate(sent_id, seen, stats, record):
                seen.add(sent_id)
                jobs.append(
                    Job(
                        source_id=f"{ref.get('ref_id')}/{sent_id}",
                        image=Path(images) / img["file_name"],
                        record=f"{record} ({img['file_name']})",
                        payload=([x, y, x + w, y + h], text.strip()),
                        expected_size=(img.get("width"), img.get("height")) if "width" in img else None,
                    )
                )
    return jobs


def load_jsonl(path: Path, images: Path, split: str | None, bbox_format: str, stats: Stats) -> list[Job]:
    """One job per line; lines whose ``split`` differs from ``split`` are left out."""
    if bbox_format not in BBOX_FORMATS:
        raise ValueError(f"bbox_format must be one of {BBOX_FORMATS}")
    jobs, seen = [], set()
    for where, rec in read_table(path, stats):
        if split is not None and rec.get("split") not in (None, split):
            continue
        image, text, bbox = pick(rec, "image", "image_path", "file_name"), pick(rec, "expression", "sent", "text"), rec.get("bbox")
        if not (
            isinstance(image, str) and isinstance(text, str) and isinstance(bbox, list) and len(bbox) == 4 and all(map(is_number, bbox))
        ):
            stats.hit("malformed_record", where)
            continue
        if not text.strip():
            stats.hit("empty_text", where)
            continue
        source_id = str(rec["id"]) if rec.get("id") is not None else f"{image}:{text.strip()}"
        if is_duplicate(source_id, seen, stats, where):
            continue
        seen.add(source_id)
        if bbox_format == "xywh":
            bbox = [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]]
        jobs.append(Job(source_id, Path(images) / image, f"{where} ({image})", (bbox, text.strip())))
    return jobs


def grounding_builder(options: ConvertOptions, data_source: str):
    """The ``build_row`` for :func:`convert` turning a referring expression into a grounding row."""

    def build(job: Job, geo: Geometry, image: bytes, index: int, stats: Stats):
        xyxy, expression = job.payload
        box = geo.box(xyxy, stats, job.record)
        if box is None:
            return None
        return make_row(
            data_source=data_source,
            task="grounding",
            prompt=prompt_text("grounding", options.model_family, expression=expression, think=options.think),
            image=image,
            geometry=geo,
            ground_truth={"bbox_2d": box, "frame": list(geo.frame)},
            source_id=job.source_id,
            index=index,
            options=options,
        )

    return build


def convert_refcoco(
    out: Path,
    options: ConvertOptions | None = None,
    *,
    refs: Path | None = None,
    instances: Path | None = None,
    jsonl: Path | None = None,
    images: Path,
    dataset: str = "refcoco",
    bbox_format: str = "xyxy",
    filter_split: bool = True,
) -> dict:
    """Convert refer-toolkit files (``refs`` + ``instances``) or a ``jsonl`` to ``out``.

    With ``filter_split`` (the default) only records of ``options.split`` are converted
    (refer splits: train, val, testA, testB, test; jsonl lines without a split are kept).
    """
    options = options or ConvertOptions()
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}")
    if (refs is None) == (jsonl is None) or (refs is not None and instances is None):
        raise ValueError("give either refs and instances, or jsonl")
    stats = Stats(options.strict)
    split = options.split if filter_split else None
    if refs is not None:
        jobs = load_refer(refs, instances, images, split, stats)
    else:
        jobs = load_jsonl(jsonl, images, split, bbox_format, stats)
    return convert(jobs, grounding_builder(options, dataset), out, options, stats, dataset)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="data_prep/refcoco.py",
        description="RefCOCO/RefCOCO+/RefCOCOg -> verl parquet (task 'grounding'), one row per expression.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--refs", type=Path, help="refer toolkit refs(unc).p / refs(umd).p / refs(google).p")
    src.add_argument("--jsonl", type=Path, help="jsonl of {image, expression, bbox}")
    p.add_argument("--instances", type=Path, help="the instances.json beside the refs file (default: its folder)")
    p.add_argument("--images", required=True, type=Path, help="COCO train2014 image folder (or the jsonl's image root)")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="data_source (default: from the refs folder name, else refcoco)")
    p.add_argument("--bbox-format", default="xyxy", choices=BBOX_FORMATS, help="jsonl box format (default: xyxy)")
    p.add_argument("--all-splits", action="store_true", help="convert every split, not only --split")
    add_common_args(p)
    return p


def _dataset_name(refs: Path | None) -> str:
    """``refcoco+/refs(unc).p`` -> ``refcoco+``; anything else -> ``refcoco``."""
    name = refs.parent.name.lower() if refs is not None else ""
    return name if name in DATASETS else "refcoco"


def main(argv=None) -> int:
    def run(args, options):
        instances = args.instances or (args.refs.parent / "instances.json" if args.refs else None)
        return convert_refcoco(
            args.out,
            options,
            refs=args.refs,
            instances=instances,
            jsonl=args.jsonl,
            images=args.images,
            dataset=args.dataset or _dataset_name(args.refs),
            bbox_format=args.bbox_format,
            filter_split=not args.all_splits,
        )

    return run_cli(build_parser(), argv, run)
