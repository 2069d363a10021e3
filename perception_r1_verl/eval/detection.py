"""COCO detection metrics through pycocotools, on every image of the split.

What happens to each row of the split:

- Its image is found in the annotation file by ``extra_info.source_id`` (an image id, a
  ``file_name``, its base name or its stem). A row whose image is not there, or whose
  ``image_size`` differs from the annotation's, stops the evaluation: boxes would be
  scored against the wrong objects.
- Every well-formed box of the answer is mapped from the row's answer frame
  (``frames.row_frame``: the ground truth's ``frame``, else the family's frame of
  ``input_size``; neither is an error) to original pixels, clipped to the image
  (``frames.to_pixels``).
- Its label goes to a category id by name, compared as the training reward compares
  labels (``labels.normalise_label``: case, width and spacing ignored). Boxes with an
  unknown or missing label are counted (``n_unknown_label``) and left out: they cannot
  be a true positive of any category.
- Its score, under three conventions evaluated side by side (``CONVENTIONS``): **paper**
  (every box 1.0, as the paper's released evaluation: ``AP``, ``AP50``, ... are these, the
  numbers comparable with its table), **rank** (``1 / (1 + rank)`` by output order:
  ``AP_rank``, ...) and **confidence** (the probability of the tokens that spell the box,
  :mod:`.confidence`, when the responses hold ``generate --logprobs``: ``AP_confidence``,
  ...). pycocotools sorts detections by score with a stable mergesort (cocoeval.py,
  ``evaluateImg`` and ``accumulate``), so tied scores keep detection order: images in id
  order, each answer's boxes in output order.
- An unparsable, empty or missing response is an image with no detections: it still
  counts, with all its ground truth missed.

The image set evaluated is the split's images (``params.imgIds``), never silently fewer.
Annotation ids are renumbered 1..N when any is <= 0 or repeated: pycocotools stores the
matched ground-truth id in ``dtMatches`` and reads 0 as "unmatched", so a ground truth with
id 0 turns its true positive into a false positive (``labelme`` exports start at 0).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import orjson

from ..frames import row_frame, to_pixels
from ..labels import normalise_label
from ..parsing import Answer
from .confidence import box_confidences
from .drawing import GT_COLOR, PRED_COLOR, draw_boxes
from .frame_check import detection_fit
from .metric import Metric, Scored
from .registry import register

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
CONVENTIONS = {
    "paper": "every box 1.0, as the paper's released evaluation; pycocotools' stable sort keeps ties "
    "in detection order (images by id, boxes in output order)",
    "rank": "1/(1+rank) by output order of the well-formed boxes (columns *_rank)",
    "confidence": "geometric mean probability of the tokens spelling the box's coordinates and label, "
    "from generate --logprobs (columns *_confidence)",
}
SIDE_STATS = ("AP", "AP50", "AP75")  # what the rank and confidence columns report


def _quiet():
    """pycocotools prints progress on every call; keep it for the summary only."""
    return contextlib.redirect_stdout(io.StringIO())


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with _quiet():
        coco.createIndex()
    return coco


def box_score(rank: int) -> float:
    """The confidence of the ``rank``-th (0-based) well-formed box of an answer.

    >>> [box_score(r) for r in range(3)]
    [1.0, 0.5, 0.3333333333333333]
    """
    return 1.0 / (1 + rank)


def fix_annotation_ids(dataset: dict) -> tuple[dict, bool]:
    """A copy of a COCO dataset whose annotation ids are 1..N when any is <= 0 or repeated.

    Missing ``area`` (box area) and ``iscrowd`` (0) are filled in too.

    >>> d, changed = fix_annotation_ids({"annotations": [{"id": 0, "bbox": [0, 0, 2, 3]}]})
    >>> d["annotations"], changed
    ([{'id': 1, 'bbox': [0, 0, 2, 3], 'area': 6, 'iscrowd': 0}], True)
    """
    anns = dataset.get("annotations", [])
    ids = [a.get("id") for a in anns]
    renumber = any(not isinstance(i, int) or i <= 0 for i in ids) or len(set(ids)) != len(ids)
    fixed = []
    for n, ann in enumerate(anns, 1):
        ann = dict(ann)
        if renumber:
            ann["id"] = n
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
        ann.setdefault("iscrowd", 0)
        fixed.append(ann)
    return {**dataset, "annotations": fixed}, renumber


@dataclass
class GroundTruth:
    """The COCO ground truth of a split and how its rows and labels map into it."""

    coco: object
    image_of: dict  # sample index -> COCO image id
    category_of: dict  # normalised name -> category id
    source: str
    notes: list = field(default_factory=list)


def _category_map(categories: list[dict]) -> dict:
    out = {}
    for cat in categories:
        key = normalise_label(cat["name"])
        if key in out:
            raise ValueError(
                f"two categories are both named {cat['name']!r} (labels compare by labels.normalise_label)"
            )
        out[key] = cat["id"]
    return out


def _image_finder(images: list[dict]):
    """Look an image up by id, file name, base name or stem (in that order)."""
    tables = [{str(img["id"]): img for img in images}, {}, {}, {}]
    for img in images:
        name = str(img.get("file_name", ""))
        base = os.path.basename(name)
        tables[1].setdefault(name, img)
        tables[2].setdefault(base, img)
        tables[3].setdefault(os.path.splitext(base)[0], img)

    def find(source_id):
        key = str(source_id)
        for table in tables:
            if key in table:
                return table[key]
        if key.isdigit() and str(int(key)) in tables[0]:  # zero-padded COCO ids
            return tables[0][str(int(key))]
        return None

    return find


def from_annotations(path_or_dataset, samples) -> GroundTruth:
    """Ground truth from a COCO ``instances.json`` (a path or the loaded dict)."""
    if isinstance(path_or_dataset, dict):
        dataset, source = path_or_dataset, "annotations"
    else:
        with open(path_or_dataset, "rb") as f:
            dataset, source = orjson.loads(f.read()), str(path_or_dataset)
    dataset, renumbered = fix_annotation_ids(dataset)
    find = _image_finder(dataset["images"])
    image_of, missing, wrong_size, seen = {}, [], [], {}
    for s in samples:
        img = find(s.extra_info.get("source_id"))
        if img is None:
            missing.append(s.extra_info.get("source_id"))
            continue
        size = s.extra_info.get("image_size")
        if size is not None and [img["width"], img["height"]] != list(size):
            wrong_size.append((s.index, list(size), [img["width"], img["height"]]))
        if img["id"] in seen:
            raise ValueError(f"rows {seen[img['id']]} and {s.index} are both image {img['id']}")
        seen[img["id"]] = s.index
        image_of[s.index] = img["id"]
    if missing:
        raise ValueError(f"{len(missing)} rows' source_id are not images of {source}: {missing[:5]}")
    if wrong_size:
        raise ValueError(
            f"{len(wrong_size)} rows' image_size differ from {source} (index, split, annotation): "
            f"{wrong_size[:3]}; is this the annotation file the split was made from?"
        )
    notes = []
    if renumbered:
        notes.append("annotation ids renumbered 1..N (pycocotools reads id 0 as unmatched)")
    left_out = len(dataset["images"]) - len(image_of)
    if left_out:
        notes.append(f"{left_out} images of {source} are not in the split and are not evaluated")
    return GroundTruth(_coco(dataset), image_of, _category_map(dataset["categories"]), source, notes)


def _to_original(box, sample) -> list[float]:
    """An answer-frame box in original pixels, clipped to the image."""
    return to_pixels(box, row_frame(sample.ground_truth, sample.extra_info), tuple(sample.extra_info["image_size"]))


def from_split(samples) -> GroundTruth:
    """Ground truth rebuilt from the split's own ``ground_truth`` objects.

    The boxes were rounded to integers of the answer frame, and areas are box areas,
    not mask areas, so AP, and APs/m/l most, can differ from the official numbers:
    pass the annotation file for those.
    """
    names = sorted(
        {normalise_label(n) for s in samples for n in s.ground_truth.get("categories", [])}
        | {normalise_label(o["label"]) for s in samples for o in s.ground_truth["objects"]}
    )
    category_of = {name: i for i, name in enumerate(names, 1)}
    images, anns, image_of = [], [], {}
    for n, s in enumerate(samples, 1):
        w, h = s.extra_info["image_size"]
        images.append({"id": n, "width": w, "height": h, "file_name": str(s.extra_info.get("source_id", n))})
        image_of[s.index] = n
        for obj in s.ground_truth["objects"]:
            x1, y1, x2, y2 = _to_original(obj["bbox_2d"], s)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": n,
                    "category_id": category_of[normalise_label(obj["label"])],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": i, "name": name} for name, i in category_of.items()],
    }
    note = "ground truth from the split (answer-frame rounding, box areas); pass --annotations for official numbers"
    return GroundTruth(_coco(dataset), image_of, category_of, "split", [note])


def detections_of(sample, answer: Answer, gt: GroundTruth) -> tuple[list[dict], list[str]]:
    """COCO result dicts for one answer (score 1.0, the paper's; ``rank``: the box's place
    among the answer's well-formed boxes), and the labels that matched no category."""
    image_id = gt.image_of[sample.index]
    labels = answer.labels or [None] * len(answer.boxes)
    dets, unknown = [], []
    for rank, (box, label) in enumerate(zip(answer.boxes.tolist(), labels, strict=True)):
        cat = gt.category_of.get(normalise_label(label)) if label is not None else None
        if cat is None:
            unknown.append(label)
            continue
        x1, y1, x2, y2 = _to_original(box, sample)
        dets.append(
            {"image_id": image_id, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 1.0, "rank": rank}
        )
    return dets, unknown


def _empty_results(coco_gt):
    """A results object with no detections (``loadRes`` fails on an empty list)."""
    return _coco({"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"], "annotations": []})


def coco_evaluate(coco_gt, detections: list[dict], image_ids) -> tuple[dict, str, object]:
    """COCOeval (bbox) over exactly ``image_ids``: metrics, printed summary, evaluator.

    ``detections`` is handed to ``loadRes``, which adds keys to its dicts. pycocotools'
    -1 ("no ground truth in this area range") becomes None.
    """
    from pycocotools.cocoeval import COCOeval

    with _quiet():
        coco_dt = coco_gt.loadRes(detections) if detections else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    metrics = {name: (None if v < 0 else float(v)) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}
    return metrics, summary.getvalue(), evaluator


def per_image_f1(evaluator) -> dict:
    """``{image_id: (tp, fp, fn)}`` at IoU 0.5 over all categories, from pycocotools' matching.

    Uses the all-areas, max-detections slice of ``evalImgs``; ignored (crowd) ground truth
    and the detections matched to it count neither way. Vectorised over all entries at
    once: per-entry numpy calls would cost a tenth of the evaluation itself.
    """
    p = evaluator.params
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    entries = [
        e
        for k in range(len(p.catIds))
        for e in evaluator.evalImgs[k * n_area * n_img : k * n_area * n_img + n_img]
        if e is not None
    ]
    if not entries:
        return {img: (0, 0, 0) for img in p.imgIds}
    position = {img: i for i, img in enumerate(p.imgIds)}
    where = [position[e["image_id"]] for e in entries]

    def owner(key):  # the image position of every detection / ground truth, in entry order
        return np.repeat(where, [len(e[key]) for e in entries])

    def row0(key):  # the IoU=0.5 row of a (T, n) array, all entries end to end
        return np.concatenate([e[key][0] for e in entries])

    counted = ~np.concatenate([e["dtIgnore"][0] for e in entries]).astype(bool)
    matched = row0("dtMatches") > 0
    gt_ok = ~np.concatenate([np.asarray(e["gtIgnore"], dtype=bool) for e in entries])
    missed = gt_ok & ~(row0("gtMatches") > 0)
    dt_owner, gt_owner = owner("dtIds"), owner("gtIds")
    tp = np.bincount(dt_owner, weights=matched & counted, minlength=n_img)
    fp = np.bincount(dt_owner, weights=~matched & counted, minlength=n_img)
    fn = np.bincount(gt_owner, weights=missed, minlength=n_img)
    return {img: (int(tp[i]), int(fp[i]), int(fn[i])) for i, img in enumerate(p.imgIds)}


def f1(tp: int, fp: int, fn: int) -> float:
    """F1 of counts; an image with nothing to find and nothing found scores 1.

    >>> f1(2, 1, 1), f1(0, 0, 0)
    (0.6666666666666666, 1.0)
    """
    total = 2 * tp + fp + fn
    return 2 * tp / total if total else 1.0


def rescored(detections: list[dict], scores: list[float]) -> list[dict]:
    """Copies of ``detections`` with other scores, for ``loadRes`` (which adds keys)."""
    return [{**d, "score": v} for d, v in zip(detections, scores, strict=True)]


def side_metrics(values: dict, suffix: str) -> dict:
    """``SIDE_STATS`` of one convention's COCO metrics, named ``AP_<suffix>``, ...

    >>> side_metrics({"AP": 0.5, "AP50": 0.7, "AP75": 0.4, "AR1": 0.2}, "rank")
    {'AP_rank': 0.5, 'AP50_rank': 0.7, 'AP75_rank': 0.4}
    """
    return {f"{k}_{suffix}": values[k] if values else None for k in SIDE_STATS}


def confidences_of(samples, answers, options) -> tuple[dict, Counter]:
    """``{index: [confidence per well-formed box]}`` of the answers with boxes, and why the
    others have none (reason -> count)."""
    got, missing = {}, Counter()
    for s, a in zip(samples, answers, strict=True):
        if not len(a.boxes):
            continue
        result = box_confidences(a, options.responses.get(s.index, ""), options.extras.get(s.index))
        if isinstance(result, str):
            missing[result] += 1
        else:
            got[s.index] = result
    return got, missing


@register("detection")
class DetectionMetric(Metric):
    """COCO evaluation of the whole split at once; a case's ``score`` is its image's F1."""

    boxes = True
    case_fields = ("tp", "fp", "fn", "n_pred")
    frame_fit = staticmethod(detection_fit)

    def evaluate(self, samples, answers, metrics, options):
        annotations = options.annotations
        gt = from_annotations(annotations, samples) if annotations is not None else from_split(samples)
        confidences, no_confidence = confidences_of(samples, answers, options)
        detections, unknown, per_sample, conf = [], Counter(), [], []
        for s, a in zip(samples, answers, strict=True):
            dets, bad = detections_of(s, a, gt)
            detections.extend(dets)
            unknown.update(str(label) for label in bad)
            per_sample.append(len(dets))
            conf += [confidences[s.index][d["rank"]] for d in dets] if s.index in confidences else [None] * len(dets)
        rank_scores = [box_score(d["rank"]) for d in detections]
        # detections.json is exactly what was evaluated (score: the paper's 1.0), with the
        # other conventions' scores beside it.
        written = [{**d, "score_rank": r, "score_confidence": c} for d, r, c in zip(detections, rank_scores, conf)]
        values, summary, evaluator = coco_evaluate(gt.coco, detections, gt.image_of.values())
        counts = per_image_f1(evaluator)
        ranked = coco_evaluate(gt.coco, rescored(detections, rank_scores), gt.image_of.values())[0]
        notes = list(gt.notes)
        usable = not no_confidence and all(c is not None for c in conf)
        by_confidence = coco_evaluate(gt.coco, rescored(detections, conf), gt.image_of.values())[0] if usable else None
        if no_confidence:
            reasons = ", ".join(f"{n} {why}" for why, n in no_confidence.most_common())
            notes.append(
                f"{sum(no_confidence.values())} answers with boxes have no usable log-probabilities ({reasons}): "
                "the confidence columns are not computed (generate --logprobs writes them); the paper "
                "columns are unaffected"
            )
        records = []
        for s, n_det in zip(samples, per_sample, strict=True):
            tp, fp, fn = counts[gt.image_of[s.index]]
            records.append(
                {
                    "index": s.index,
                    "group": s.group,
                    "score": f1(tp, fp, fn),
                    "image_id": gt.image_of[s.index],
                    "n_pred": n_det,
                    "tp": tp,
                    "fp": fp,
                    "fn": fn,
                }
            )
        metrics.update(values)
        metrics.update(side_metrics(ranked, "rank"))
        metrics.update(side_metrics(by_confidence, "confidence"))
        metrics.update(
            {
                "n_images": len(gt.image_of),
                "n_detections": len(written),
                "n_unknown_label": sum(unknown.values()),
                "unknown_labels": dict(unknown.most_common(10)),
                "score_conventions": CONVENTIONS,
                "n_without_confidence": dict(no_confidence),
                "ground_truth": gt.source,
            }
        )
        return Scored(self.task, metrics, records, written, summary, gt, notes)

    def n_truth(self, gt):
        return len(gt.get("objects") or [])

    def draw_truth(self, draw, gt, to_image, width):
        objects = gt.get("objects") or []
        draw_boxes(draw, [to_image(o["bbox_2d"]) for o in objects], GT_COLOR, width, [o.get("label") for o in objects])

    def draw_case(self, draw, size, sample, record, response, scored, width):
        # What COCOeval saw: its ground truth and the evaluated detections, in original pixels.
        coco = scored.ground_truth.coco
        names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
        info = sample.extra_info
        sx, sy = size[0] / info["image_size"][0], size[1] / info["image_size"][1]

        def xyxy(b):
            return [b[0] * sx, b[1] * sy, (b[0] + b[2]) * sx, (b[1] + b[3]) * sy]

        anns = coco.imgToAnns.get(record["image_id"], [])
        draw_boxes(draw, [xyxy(a["bbox"]) for a in anns], GT_COLOR, width, [names[a["category_id"]] for a in anns])
        dets = [d for d in scored.detections if d["image_id"] == record["image_id"]]
        draw_boxes(
            draw,
            [xyxy(d["bbox"]) for d in dets],
            PRED_COLOR,
            width,
            [f"{names[d['category_id']]} {_shown_score(d)}" for d in dets],
            bottom=True,
        )

    def case_note(self, sample, record, response):
        return ""  # the drawn detections are the answer


def _shown_score(det: dict) -> str:
    """A drawn detection's label suffix: its token confidence, else its output rank.

    >>> _shown_score({"rank": 1, "score_confidence": 0.875}), _shown_score({"rank": 1, "score_confidence": None})
    ('p=0.88', '#2')
    """
    c = det.get("score_confidence")
    return f"p={c:.2f}" if c is not None else f"#{det['rank'] + 1}"
