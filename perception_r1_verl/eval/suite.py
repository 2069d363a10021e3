"""``perception-r1-eval suite``: every benchmark split of the paper, prepared, generated and scored.

``DATASET_ROOT`` holds one folder per benchmark family; each folder is laid out as the
training recipe of the same name takes its own ``DATASET_ROOT`` (the converter's
``release_args``, ``perception_r1_verl/data/<task>.py``),
so one download serves both::

    DATASET_ROOT/
      refcoco/                          the refer toolkit's data/ folder
        refcoco/refs(unc).p   refcoco/instances.json      RefCOCO  val testA testB
        refcoco+/refs(unc).p  refcoco+/instances.json     RefCOCO+ val testA testB
        refcocog/refs(umd).p  refcocog/instances.json     RefCOCOg val test (the umd split)
        images/mscoco/images/train2014/
      pixmo_count/
        validation.parquet  test.parquet                  Hugging Face export of PixMo-Count
        images/                                           the downloaded images, named by image_sha256
      page_ocr/
        en.jsonl  [zh.jsonl]                              {"image", "text"}, images relative to the jsonl
      coco_det/
        annotations/instances_val2017.json  val2017/      COCO val2017

Each benchmark's entry in :data:`BENCHMARKS` names its splits and one or more
:class:`Layout` (the converter of ``perception_r1_verl.data`` and the files it reads); the
first layout whose files exist is used. A split whose files are missing is reported,
counted and skipped, unless the user named its benchmark (``benchmarks=``), which makes it
an error before anything runs. ``page_ocr/zh`` is optional: scored when present.

Per split, under ``out/<benchmark>/<split>/``: ``data.parquet`` (+ ``data.summary.json``,
the converter's report), ``responses.jsonl``, and ``score``'s ``metrics.json``,
``metrics.md``, ``samples.jsonl``, ``report.html``. Then ``out/suite.md`` and
``out/suite.json``: one table laid out like the paper's Tables 1-3, this model's metric per
split beside the paper's baseline and Perception-R1 numbers (:mod:`.paper`).

Rerunning the same command resumes: a split whose parquet and summary exist with the same
options is not prepared again (other options are an error naming them), generation skips
the indices already in ``responses.jsonl`` (``generate``), and a split is scored again only
when its ``metrics.json`` is older than its responses or parquet.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import families
from ..data import coco_det, page_ocr, pixmo_count, refcoco
from ..data.driver import summary_path
from ..data.options import ConvertOptions
from ..families import family_of_model
from . import generate as gen
from .paper import CITATION, LOWER_IS_BETTER, TABLES, format_paper, metric_value, paper_values
from .score import format_value, score

# Converter options that change the rows: a prepared split made with others is not reused.
PREP_KEYS = ("split", "model_family", "min_pixels", "max_pixels", "limit", "seed", "think")


class SuiteError(ValueError):
    """A run that cannot start or a split that cannot be reused as it is; the message says why."""


@dataclass(frozen=True)
class Layout:
    """One way a benchmark's files lie in its folder.

    ``inputs(folder, split)`` gives the converter's path arguments (all must exist);
    ``convert(out, options, inputs)`` runs the converter and returns its summary.
    """

    name: str
    inputs: Callable[[Path, str], dict]
    convert: Callable[[Path, ConvertOptions, dict], dict]


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    folder: str  # under DATASET_ROOT: the recipe task whose DATASET_ROOT it is
    splits: tuple[str, ...]
    layouts: tuple[Layout, ...]
    optional: tuple[str, ...] = ()  # scored when present, not missed when absent
    annotations: str | None = None  # the input passed to score() as COCO annotations
    logprobs: bool = False  # generate --logprobs: its AP is also scored by token confidence


# Each layout's inputs are its converter's release_paths: the recipe reads the same description.
def _refer(dataset: str, refs: str) -> Layout:
    def inputs(folder: Path, split: str) -> dict:
        return refcoco.release_paths(folder, dataset, refs)

    def convert(out: Path, options: ConvertOptions, paths: dict) -> dict:
        return refcoco.convert_refcoco(out, options, dataset=dataset, **paths)

    return Layout(f"refer toolkit {dataset}/{refs}", inputs, convert)


def _pixmo() -> Layout:
    return Layout(
        "Hugging Face parquet + images/",
        pixmo_count.release_paths,
        lambda out, options, p: pixmo_count.convert_pixmo_count(p["table"], p["images"], out, options),
    )


def _page_ocr() -> Layout:
    return Layout(
        "<split>.jsonl",
        page_ocr.release_paths,
        lambda out, options, p: page_ocr.convert_page_ocr(p["jsonl"], None, out, options),
    )


def _coco() -> Layout:
    # keep_empty: images without objects are part of COCO val and of its AP (false positives count).
    return Layout(
        "COCO annotations/ + images",
        coco_det.release_paths,
        lambda out, options, p: coco_det.convert_coco(p["annotations"], p["images"], out, options, keep_empty=True),
    )


BENCHMARKS = {
    b.name: b
    for b in (
        Benchmark("refcoco", "RefCOCO", "refcoco", ("val", "testA", "testB"), (_refer("refcoco", "refs(unc).p"),)),
        Benchmark("refcoco+", "RefCOCO+", "refcoco", ("val", "testA", "testB"), (_refer("refcoco+", "refs(unc).p"),)),
        Benchmark("refcocog", "RefCOCOg", "refcoco", ("val", "test"), (_refer("refcocog", "refs(umd).p"),)),
        Benchmark("pixmo_count", "PixMo-Count", "pixmo_count", ("val", "test"), (_pixmo(),)),
        Benchmark("page_ocr", "PageOCR", "page_ocr", ("en",), (_page_ocr(),), optional=("zh",)),
        Benchmark("coco", "COCO", "coco_det", ("val2017",), (_coco(),), annotations="annotations", logprobs=True),
    )
}


def select(benchmarks) -> tuple[list[Benchmark], bool]:
    """The benchmarks to run and whether the user named them (``None``: all, not named).

    >>> [b.name for b in select("coco, refcoco+")[0]], select(None)[1]
    (['coco', 'refcoco+'], False)
    """
    if benchmarks is None:
        return list(BENCHMARKS.values()), False
    names = [n.strip() for n in benchmarks.split(",")] if isinstance(benchmarks, str) else list(benchmarks)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise SuiteError(f"unknown benchmarks {unknown}; choose from {', '.join(BENCHMARKS)}")
    return [BENCHMARKS[n] for n in dict.fromkeys(names)], True


def find_inputs(bench: Benchmark, root: Path, split: str) -> tuple[Layout | None, dict | list[str]]:
    """``(layout, inputs)`` of the first layout whose files all exist, else ``(None, paths missing)``."""
    missing = []
    for layout in bench.layouts:
        paths = layout.inputs(Path(root) / bench.folder, split)
        absent = [str(p) for p in paths.values() if not Path(p).exists()]
        if not absent:
            return layout, paths
        missing += absent
    return None, missing


def model_family_of(model) -> str:
    """The family of a model folder (a hub name is downloaded first), from its ``config.json``."""
    try:
        return family_of_model(gen.resolve_model_dir(model))
    except ValueError as e:
        raise SuiteError(f"{e}; pass --model-family") from None


def prepared_summary(data: Path, options: ConvertOptions) -> dict | None:
    """The converter summary of a finished preparation of ``data`` with ``options``.

    None when it must be (re)done (no parquet, or no summary: interrupted before the end);
    a preparation with other options raises, since its responses answer other rows.
    """
    summary_file = summary_path(data)
    if not (data.exists() and summary_file.exists()):
        return None
    summary = json.loads(summary_file.read_text())
    want = {k: v for k, v in asdict(options).items() if k in PREP_KEYS}
    got = {k: summary.get("options", {}).get(k) for k in PREP_KEYS}
    if got != want:
        diff = {k: (got[k], want[k]) for k in PREP_KEYS if got[k] != want[k]}
        raise SuiteError(
            f"{data} was prepared with other options (prepared, asked): {diff}; "
            f"delete {data.parent} or choose another --out"
        )
    return summary


def is_fresh(target: Path, sources) -> bool:
    """Whether ``target`` exists and is at least as new as every source."""
    return target.exists() and all(target.stat().st_mtime_ns >= Path(s).stat().st_mtime_ns for s in sources)


@dataclass
class SplitResult:
    benchmark: str
    split: str
    status: str  # scored, missing, absent (optional split), empty, failed
    detail: str = ""
    n: int | None = None
    metrics: dict = field(default_factory=dict)
    dir: str | None = None


def run_split(
    bench: Benchmark,
    split: str,
    layout: Layout,
    inputs: dict,
    split_dir: Path,
    model,
    options: ConvertOptions,
    generation: dict,
    scoring: dict,
    log,
) -> SplitResult:
    """Prepare, generate and score one split, skipping what an earlier run finished."""
    name, data = f"{bench.name}/{split}", split_dir / "data.parquet"
    result = SplitResult(bench.name, split, "scored", dir=str(split_dir))
    summary = prepared_summary(data, options)
    if summary is None:
        start = time.perf_counter()
        summary = layout.convert(data, options, inputs)
        log(f"[suite] {name}: prepared {summary['rows']} rows from {layout.name} ({time.perf_counter() - start:.1f} s)")
    result.n = summary["rows"]
    if not result.n:
        result.status, result.detail = "empty", f"no row converted; see {summary_path(data)}"
        return result
    responses, metrics_file = split_dir / "responses.jsonl", split_dir / "metrics.json"
    stats = gen.generate(
        model, data, responses, log=lambda msg: log(f"[suite] {name}: {msg}"), logprobs=bench.logprobs, **generation
    )
    log(f"[suite] {name}: {stats['generated']} generated, {stats['already_done']} already done")
    if is_fresh(metrics_file, (data, responses)):
        result.metrics = json.loads(metrics_file.read_text())
    else:
        annotations = inputs[bench.annotations] if bench.annotations else None
        result.metrics = score(data, responses, split_dir, annotations=annotations, **scoring)
        log(f"[suite] {name}: scored -> {metrics_file}")
    return result


def run_suite(
    model,
    dataset_root,
    out,
    *,
    benchmarks=None,
    model_family: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    workers: int = 0,
    progress: bool = True,
    report: bool = True,
    zh_tokenizer: str = "auto",
    log=print,
    **generation,
) -> dict:
    """Run every selected benchmark split; write and return the table (``suite.json``'s content).

    ``limit`` prepares at most that many rows per split (a seeded random subset, for smoke
    runs); ``generation`` goes to :func:`generate.generate` (backend, batch_size, ...).
    """
    root, out = Path(dataset_root), Path(out)
    if not root.is_dir():
        raise SuiteError(f"DATASET_ROOT {root} is not a folder (see the layout in `perception-r1-eval suite -h`)")
    if limit is not None and limit <= 0:
        raise SuiteError(f"limit must be positive, got {limit}")
    chosen, named = select(benchmarks)
    family = families.family(model_family).name if model_family else model_family_of(model)
    todo, results, unmet = [], [], []
    for bench in chosen:
        for split in bench.splits + bench.optional:
            layout, found = find_inputs(bench, root, split)
            if layout is not None:
                todo.append((bench, split, layout, found))
            elif split in bench.optional:
                results.append(SplitResult(bench.name, split, "absent", "optional; not present"))
            else:
                results.append(SplitResult(bench.name, split, "missing", "not found: " + ", ".join(found)))
                unmet.append(f"{bench.name}/{split}: not found: {', '.join(found)}")
    if named and unmet:
        raise SuiteError("named benchmarks are not in DATASET_ROOT:\n  " + "\n  ".join(unmet))
    for line in unmet:
        log(f"[suite] skipped {line}")
    scoring = {"report": report, "zh_tokenizer": zh_tokenizer}
    generation = {**generation, "engines": {}}  # one model load for every split
    for bench, split, layout, inputs in todo:
        options = ConvertOptions(
            split=split, model_family=family, limit=limit, seed=seed, workers=workers, progress=progress
        )
        split_dir = out / bench.name / split
        try:
            result = run_split(bench, split, layout, inputs, split_dir, model, options, generation, scoring, log)
        except ValueError as e:  # bad input (DataError), another frame, a reused split's options
            result = SplitResult(bench.name, split, "failed", str(e), dir=str(split_dir))
            log(f"[suite] {bench.name}/{split} failed: {e}")
        results.append(result)
    table = suite_table(results, model=str(model), family=family, root=str(root), limit=limit)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(table, indent=2) + "\n"
    (out / "suite.json").write_text(text)
    (out / "suite.md").write_text(suite_markdown(table))
    return json.loads(text)  # exactly suite.json


def table_rows(results: list[SplitResult]) -> list[dict]:
    """One row per (paper table, benchmark, split, metric) of the splits run or missing."""
    by_key = {(r.benchmark, r.split): r for r in results}
    rows = []
    for table in TABLES:
        for name in table.benchmarks:
            bench = BENCHMARKS[name]
            for split in bench.splits + bench.optional:
                r = by_key.get((name, split))
                if r is None or r.status == "absent":
                    continue
                for metric in table.metrics[name]:
                    baseline, ours_paper = paper_values(name, split, metric)
                    rows.append(
                        {
                            "table": table.number,
                            "benchmark": name,
                            "split": split,
                            "metric": metric,
                            "status": r.status,
                            "n": r.n,
                            "value": metric_value(r.metrics, metric),
                            # the other box-score conventions (detection): None elsewhere
                            "value_rank": r.metrics.get(f"{metric}_rank"),
                            "value_confidence": r.metrics.get(f"{metric}_confidence"),
                            "paper_baseline": baseline,
                            "paper_perception_r1": ours_paper,
                        }
                    )
    return rows


def suite_table(results: list[SplitResult], *, model: str, family: str, root: str, limit: int | None) -> dict:
    """``suite.json``: the table rows, every split's outcome and the counts of each outcome."""
    splits = [
        {**{k: v for k, v in asdict(r).items() if k != "metrics"}, "warnings": r.metrics.get("warnings", [])}
        for r in results
    ]
    return {
        "model": model,
        "model_family": family,
        "dataset_root": root,
        "limit": limit,
        "paper": CITATION,
        "counts": dict(Counter(r.status for r in results)),
        "rows": table_rows(results),
        "splits": splits,
    }


def suite_markdown(table: dict) -> str:
    """``suite.md``: one section per paper table, then what was not scored and why."""
    lines = [
        f"# Benchmarks of {table['model']}",
        "",
        f"Model family `{table['model_family']}`, data from `{table['dataset_root']}`. Values in %; "
        f"edit distance is lower-is-better. Paper columns: {CITATION}, Tables 1-3 "
        "(`-`: the paper gives no number).",
        "",
    ]
    if table["limit"]:
        lines += [f"> At most {table['limit']} rows per split (a random subset): not comparable with the paper.", ""]
    titles = {b.name: b.title for b in BENCHMARKS.values()}
    for paper_table in TABLES:
        rows = [r for r in table["rows"] if r["table"] == paper_table.number]
        if not rows:
            continue
        # Detection's AP under the other box-score conventions, beside the paper's (docs/evaluation.md).
        side = any(r["value_rank"] is not None or r["value_confidence"] is not None for r in rows)
        extra_head = " rank scoring | token confidence |" if side else ""
        lines += [
            f"## Table {paper_table.number}. {paper_table.title}",
            "",
            f"Paper baseline: {paper_table.baseline}.",
            "",
            "| benchmark | split | metric | n | this model" + (" (paper: every box 1.0)" if side else "") + " |"
            f"{extra_head} paper baseline | paper Perception-R1 |",
            "|---" * (9 if side else 7) + "|",
        ]
        for r in rows:
            value = format_value(r["metric"], r["value"]) if r["status"] == "scored" else r["status"]
            metric = r["metric"] + (" (lower is better)" if r["metric"] in LOWER_IS_BETTER else "")
            others = (
                f" {format_value(r['metric'], r['value_rank'])} | {format_value(r['metric'], r['value_confidence'])} |"
                if side
                else ""
            )
            lines.append(
                f"| {titles[r['benchmark']]} | {r['split']} | {metric} | {r['n'] if r['n'] is not None else '-'} "
                f"| {value} |{others} {format_paper(r['paper_baseline'])} | {format_paper(r['paper_perception_r1'])} |"
            )
        lines.append("")
    counts = ", ".join(f"{n} {status}" for status, n in sorted(table["counts"].items()))
    lines += [f"Splits: {counts}.", ""]
    lines += [
        f"- {s['benchmark']}/{s['split']}: {s['status']}: {s['detail']}"
        for s in table["splits"]
        if s["status"] != "scored"
    ]
    lines += [f"- {s['benchmark']}/{s['split']}: warning: {w}" for s in table["splits"] for w in s["warnings"]]
    return "\n".join(lines).rstrip() + "\n"
