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
from pathlib import Path

import orjson

from ..parsing import parse_answer
from .dataset import Sample, read_responses, read_split
from .frame_check import diagnose, diagnosis_line
from .metric import Scored, ScoreOptions, format_value, metric_names
from .metrics import get_metric
from .report import write_report

__all__ = ["Scored", "format_value", "markdown", "metric_names", "score", "score_samples", "write_outputs"]


def _single_task(samples: list[Sample]) -> str:
    tasks = Counter(s.task for s in samples)
    if len(tasks) != 1:
        raise ValueError(f"score one task per split; this one mixes {dict(tasks)}")
    return next(iter(tasks))


def finish_of(extra: dict | None) -> str | None:
    """A response's ``finish_reason`` as written by ``generate``; None when unknown
    (older files, other writers, anything but a short string).

    >>> finish_of({"finish_reason": "length"}), finish_of({}), finish_of({"finish_reason": [1]})
    ('length', None, None)
    """
    reason = (extra or {}).get("finish_reason")
    return reason if isinstance(reason, str) and len(reason) <= 32 else None


def _answer_counts(answers, samples, responses, boxes: bool, extras: dict) -> dict:
    missing = sum(s.index not in responses for s in samples)
    finishes = [finish_of(extras.get(s.index)) for s in samples if s.index in responses]
    return {
        "n_samples": len(samples),
        "n_missing": missing,
        # Free-text answers (OCR) have no style to miss; for box tasks "unparsable" is an
        # answer in no known style.
        "n_unparsable": sum(not a.parsed for a in answers) - missing if boxes else 0,
        "n_empty": sum(not a.text for a in answers) - missing,
        "n_truncated": sum(a.truncated for a in answers),
        # Cut by the engine at max_new_tokens (vLLM's finish_reason, transformers' missing
        # end token); n_truncated only sees the text's shape.
        "n_hit_length": finishes.count("length"),
        "n_finish_unknown": finishes.count(None),
    }


def score_samples(
    samples: list[Sample],
    responses: dict[str, str],
    *,
    annotations=None,
    zh_tokenizer: str = "auto",
    extras: dict | None = None,
) -> Scored:
    """Score parsed samples against ``{index: response}`` with the task's registered
    metric; pure apart from reading ``annotations``. ``extras``: each response's other
    fields by index (``read_responses``), e.g. its ``finish_reason``."""
    if not samples:
        raise ValueError("the split has no rows")
    task = _single_task(samples)
    metric = get_metric(task)
    answers = [parse_answer(responses.get(s.index, ""), think=s.think) for s in samples]
    extras = extras or {}
    metrics = {"task": task, **_answer_counts(answers, samples, responses, metric.boxes, extras)}
    scored = metric.evaluate(samples, answers, metrics, ScoreOptions(annotations, zh_tokenizer, responses, extras))
    for r, s in zip(scored.records, samples, strict=True):  # the report marks the rows cut at the limit
        r["finish_reason"] = finish_of(extras.get(s.index)) if s.index in responses else None
    if metric.frame_fit is not None:
        scored.metrics["frame_diagnosis"] = diagnosis = diagnose(metric.frame_fit, samples, answers)
        line = diagnosis_line(diagnosis)
        if line:
            scored.warnings.append(line)
    return scored


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
    if m.get("score_conventions"):
        lines += ["", "Box score conventions of the AP columns (AP, AP50, ... are the paper's):"]
        lines += [f"- {name}: {rule}" for name, rule in m["score_conventions"].items()]
    counts = ", ".join(
        f"{k} {m[k]}"
        for k in ("n_missing", "n_unparsable", "n_empty", "n_truncated", "n_hit_length", "n_finish_unknown")
    )
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
    extras: dict = {}
    by_index, stats = read_responses(responses, extras)
    scored = score_samples(samples, by_index, annotations=annotations, zh_tokenizer=zh_tokenizer, extras=extras)
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
        write_report(out_dir, data, samples, scored, by_index, top_k=top_k)
    return scored.metrics
