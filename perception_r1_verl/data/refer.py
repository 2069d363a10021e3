"""The refer toolkit's RefCOCO files -> grounding jobs: ``refs(unc).p`` / ``refs(umd).p`` /
``refs(google).p`` with the ``instances.json`` beside them and COCO train2014 images.

The ``.p`` files are pickles, so they are read with :func:`safe_load_pickle`, which builds
only plain containers and scalars: a downloaded file cannot run code. The other RefCOCO
inputs (peers' tables, this package's jsonl) and the command: :mod:`.refcoco`.
"""

from __future__ import annotations

import io
import pickle
import reprlib
from pathlib import Path

import orjson

from perception_r1_verl.data.driver import Job
from perception_r1_verl.data.rules import DataError, Stats
from perception_r1_verl.data.tables import is_duplicate, is_id, is_number, pick, under_root


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
    images = {i["id"]: i for i in data["images"] if isinstance(i, dict) and is_id(i.get("id"))}
    anns = {a["id"]: a for a in data.get("annotations") or [] if isinstance(a, dict) and is_id(a.get("id"))}
    return images, anns


def load_refer(refs: Path, instances: Path, images: Path, split: str | None, stats: Stats) -> list[Job]:
    """One job per sentence of the refs in ``split`` (None: every split)."""
    try:
        ref_list = safe_load_pickle(refs)
    except Exception as e:  # a hostile pickle fails in many ways (BUILD on a dict, huge lengths, ...)
        raise DataError(f"cannot read refs {refs}: {type(e).__name__}: {e}") from e
    if not isinstance(ref_list, list):
        raise DataError(f"{refs} does not hold a list of refs")
    coco_images, anns = _coco_index(instances, stats)
    jobs, seen = [], set()
    for ref in ref_list:
        if not (isinstance(ref, dict) and all(is_id(ref.get(k)) for k in ("ref_id", "image_id", "ann_id"))):
            stats.hit("malformed_record", f"ref {reprlib.repr(ref)}")  # reprlib: bounded, even for deep nesting
            continue
        if split is not None and ref.get("split") != split:
            continue
        where = f"ref id {ref['ref_id']}"
        img, ann = coco_images.get(ref["image_id"]), anns.get(ref["ann_id"])
        bbox = ann.get("bbox") if ann else None
        box_ok = isinstance(bbox, list) and len(bbox) == 4 and all(map(is_number, bbox))
        sentences = ref.get("sentences")
        if img is None or not isinstance(img.get("file_name"), str) or not box_ok or not isinstance(sentences, list):
            stats.hit("malformed_record", f"{where}: image {ref['image_id']} / annotation {ref['ann_id']}")
            continue
        image = under_root(images, img.get("file_name"))
        if image is None:
            stats.hit("image_outside_root", f"{where}: file_name {img.get('file_name')!r}")
            continue
        x, y, w, h = bbox
        for sent in sentences:
            sent_id = sent.get("sent_id") if isinstance(sent, dict) else None
            text = pick(sent, "sent", "raw") if isinstance(sent, dict) else None
            record = f"{where} sentence {reprlib.repr(sent_id)}"
            if not isinstance(text, str) or not is_id(sent_id):
                stats.hit("malformed_record", record)
            elif not text.strip():
                stats.hit("empty_text", record)
            elif not is_duplicate(sent_id, seen, stats, record):
                seen.add(sent_id)
                jobs.append(
                    Job(
                        source_id=f"{ref.get('ref_id')}/{sent_id}",
                        image=image,
                        record=f"{record} ({img['file_name']})",
                        payload=([x, y, x + w, y + h], text.strip()),
                        expected_size=(img.get("width"), img.get("height")) if "width" in img else None,
                    )
                )
    return jobs
