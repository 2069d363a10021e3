"""Score a responses jsonl against a split: ``metrics.json``, ``metrics.md``, ``samples.jsonl``.

Every row of the split is scored: a row with no response (or an unreadable one) is
scored as an empty answer and counted in ``n_missing``; responses whose index is not in
the split are counted in ``responses.unmatched``. One task per split (``data_prep``
writes one parquet per task and split); grounding, counting and OCR are broken down by
``data_source/split`` in ``by_split`` when a parquet holds several.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ..parsing import parse_answer
from . import detection as det
from .counting import sample_counting, summarize_counting
from .dataset import Sample, read_responses, read_split
from .grounding import sample_grounding, summarize_grounding
from .ocr import METEOR_HELP, find_wordnet, resolve_zh_tokenizer, sample_ocr, summarize_ocr

SUMMARIES = {"grounding": summarize_grounding, "counting": summarize_counting, "ocr": summarize_ocr}
NOT_PERCENT = frozenset({"MAE"})  # shown as is in the markdown; other metrics as %


@dataclass
class Scored:
    """Everything scoring produced, before it is written."""

    task: str
    metrics: dict
    records: list  # one dict per sample, in split order
    detections: list | None = None
    coco_summary: str | None = None
    ground_truth: object = None  # detection.GroundTruth for detection
    warnings: list = field(default_factory=list)


def _single_task(samples: list[Sample]) -> str:
    tasks = Counter(s.task for s in samples)
    if len(tasks) != 1:
        raise ValueError(f"score one task per split; this one mixes {dict(tasks)}")
    return next(iter(tasks))


def _answer_counts(answers, samples, responses) -> dict:
    missing = sum(s.index not in responses for s in samples)
    box_task = samples[0].task != "ocr"
    return {
        "n_samples": len(samples),
        "n_missing": missing,
        # OCR answers are free text; for box tasks "unparsable" is an answer in no known style.
        "n_unparsable": sum(not a.parsed for a in answers) - missing if box_task else 0,
        "n_empty": sum(not a.text for a in answers) - missing,
        "n_truncated": sum(a.truncated for a in answers),
    }


def score_samples(
    samples: list[Sample], responses: dict[str, str], *, annotations=None, zh_tokenizer: str = "auto"
) -> Scored:
    """Score parsed samples against ``{index: response}``; pure apart from reading ``annotations``."""
    if not samples:
        raise ValueError("the split has no rows")
    task = _single_task(samples)
    answers = [parse_answer(responses.get(s.index, ""), think=s.think) for s in samples]
    metrics = {"task": task, **_answer_counts(answers, samples, responses)}
    if task == "detection":
        return _score_detection(samples, answers, metrics, annotations)
    warnings = []
    if task == "ocr":
        zh_tokenizer = resolve_zh_tokenizer(zh_tokenizer)
        wordnet = find_wordnet()
        if wordnet is None:
            warnings.append(f"METEOR not computed: {METEOR_HELP}")
        records = [sample_ocr(a, s.ground_truth, zh_tokenizer, wordnet) for a, s in zip(answers, samples)]
        metrics["zh_tokenizer"] = zh_tokenizer
    elif task == "grounding":
        records = [sample_grounding(a, s.ground_truth) for a, s in zip(answers, samples)]
    elif task == "counting":
        records = [sample_counting(a, s.ground_truth) for a, s in zip(answers, samples)]
    else:
        raise ValueError(f"unknown task {task!r}")
    for r, s in zip(records, samples, strict=True):
        r["index"], r["group"] = s.index, s.group
    summarize = SUMMARIES[task]
    metrics.update(summarize(records))
    groups = sorted({s.group for s in samples})
    if len(groups) > 1:
        metrics["by_split"] = {}
        for g in groups:
            rs = [r for r in records if r["group"] == g]
            metrics["by_split"][g] = {"n_samples": len(rs), **summarize(rs)}
    return Scored(task, metrics, records, warnings=warnings)


def _score_detection(samples, answers, metrics, annotations) -> Scored:
    gt = det.from_annotations(annotations, samples) if annotations is not None else det.from_split(samples)
    detections, unknown, per_sample = [], Counter(), []
    for s, a in zip(samples, answers, strict=True):
        dets, bad = det.detections_of(s, a, gt)
        detections.extend(dets)
        unknown.update(str(label) for label in bad)
        per_sample.append(len(dets))
    # detections.json is exactly what was evaluated: copy before loadRes adds its keys.
    written = [dict(d) for d in detections]
    values, summary, evaluator = det.coco_evaluate(gt.coco, detections, gt.image_of.values())
    counts = det.per_image_f1(evaluator)
    records = []
    for s, n_det in zip(samples, per_sample, strict=True):
        tp, fp, fn = counts[gt.image_of[s.index]]
        records.append(
            {
                "index": s.index,
                "group": s.group,
                "score": det.f1(tp, fp, fn),
                "image_id": gt.image_of[s.index],
                "n_pred": n_det,
                "tp": tp,
                "fp": fp,
                "fn": fn,
            }
        )
    metrics.update(values)
    metrics.update(
        {
            "n_images": len(gt.image_of),
            "n_detections": len(written),
            "n_unknown_label": sum(unknown.values()),
            "unknown_labels": dict(unknown.most_common(10)),
            "score_rule": "1/(1+rank) by output order of the well-formed boxes",
            "ground_truth": gt.source,
        }
    )
    return Scored("detection", metrics, records, written, summary, gt, list(gt.notes))


def format_value(name: str, value) -> str:
    """A metric as shown in tables: % with one decimal, ``NOT_PERCENT`` ones as is."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}" if name in NOT_PERCENT else f"{100 * value:.1f}"
    return str(value)


def metric_names(metrics: dict) -> list[str]:
    """The metric keys of a metrics dict (floats, or None for a metric not computable)."""
    return [k for k, v in metrics.items() if isinstance(v, float) or (v is None and k[0].isupper())]


def _table(rows: dict[str, dict], names: list[str], first: str) -> list[str]:
    lines = [f"| {first} | n | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for key, m in rows.items():
        lines.append(f"| {key} | {m['n_samples']} | " + " | ".join(format_value(n, m.get(n)) for n in names) + " |")
    return lines


def markdown(scored: Scored, title: str) -> str:
    """The metrics as markdown tables (percentages except ``NOT_PERCENT``)."""
    m = scored.metrics
    names = metric_names(m)
    lines = [f"# {scored.task} on {title}", "", "Values in % except MAE.", ""]
    lines += _table({"all": m}, names, "split")
    for key, label in (("by_split", "split"), ("by_language", "language")):
        if m.get(key):
            lines += ["", *_table(m[key], names, label)]
    counts = ", ".join(f"{k} {m[k]}" for k in ("n_missing", "n_unparsable", "n_empty", "n_truncated"))
    lines += ["", f"Responses: {counts}."]
    if scored.coco_summary:
        lines += ["", "```", scored.coco_summary.rstrip(), "```"]
    if scored.warnings:
        lines += ["", *(f"> {w}" for w in scored.warnings)]
    return "\n".join(lines) + "\n"


def write_outputs(out_dir, scored: Scored, title: str) -> None:
    """``metrics.json``, ``metrics.md``, ``samples.jsonl`` and, for detection, ``detections.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_bytes(orjson.dumps(scored.metrics, option=orjson.OPT_INDENT_2))
    (out / "metrics.md").write_text(markdown(scored, title))
    with open(out / "samples.jsonl", "wb") as f:
        for r in scored.records:
            f.write(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    if scored.detections is not None:
        (out / "detections.json").write_bytes(orjson.dumps(scored.detections))


def score(
    data: str | os.PathLike,
    responses: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    annotations=None,
    zh_tokenizer: str = "auto",
    report: bool = True,
    top_k: int = 8,
) -> dict:
    """Score ``responses`` against the split ``data`` and write everything to ``out_dir``.

    Returns ``metrics.json``'s content.
    """
    samples = read_split(data)
    by_index, stats = read_responses(responses)
    scored = score_samples(samples, by_index, annotations=annotations, zh_tokenizer=zh_tokenizer)
    known = {s.index for s in samples}
    stats["unmatched"] = sum(i not in known for i in by_index)
    scored.metrics["responses"] = stats
    if stats["unmatched"] or stats["bad_lines"]:
        scored.warnings.append(
            f"{stats['unmatched']} responses have an index not in the split and {stats['bad_lines']} lines "
            "were unreadable; are the responses from this split?"
        )
    scored.metrics["warnings"] = scored.warnings
    write_outputs(out_dir, scored, Path(data).name)
    if report:
        from .report import write_report

        write_report(out_dir, data, samples, scored, by_index, top_k=top_k)
    return scored.metrics
