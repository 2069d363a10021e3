"""``perception-r1-eval``: ``generate`` responses for a split, then ``score`` them; ``suite``
runs every benchmark; ``rollouts`` draws the rollouts verl dumped during training
(``trainer.rollout_data_dir``); ``curves`` draws training runs' metrics (verl's file logger)."""

from __future__ import annotations

import argparse
import os
import sys

from ..families import MODEL_FAMILIES
from ..outputs import OutputError, check_output


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perception-r1-eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="greedy responses for every row of a split (resumable)")
    gen.add_argument("--model", required=True, help="Hugging Face model folder or merged verl checkpoint")
    gen.add_argument("--data", required=True, help="parquet split made by data_prep")
    gen.add_argument("--out", required=True, help="responses jsonl (appended; existing indices are skipped)")
    _engine_args(gen)
    gen.add_argument("--limit", type=int, default=None, help="generate at most this many rows in this call")
    gen.add_argument(
        "--logprobs",
        action="store_true",
        help="also write each generated token's log-probability and offset (box confidence for score's AP)",
    )

    sc = sub.add_parser("score", help="metrics, tables and report for a responses jsonl")
    sc.add_argument("--data", required=True, help="parquet split the responses answer")
    sc.add_argument("--responses", required=True, help='jsonl of {"index", "response"}')
    sc.add_argument("--out", required=True, help="output folder")
    sc.add_argument("--annotations", default=None, help="COCO instances.json (detection)")
    sc.add_argument(
        "--zh-tokenizer",
        choices=("auto", "jieba", "char"),
        default="auto",
        help="Chinese OCR tokenisation (auto: jieba if installed, else per character)",
    )
    sc.add_argument("--top-k", type=int, default=8, help="best and worst cases in report.html")
    sc.add_argument("--no-report", action="store_true", help="skip report.html")

    from .suite import __doc__ as suite_doc

    su = sub.add_parser(
        "suite",
        help="prepare, generate and score every benchmark split; one table (resumable)",
        description=suite_doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    su.add_argument("--model", required=True, help="Hugging Face model folder or merged verl checkpoint")
    su.add_argument("--dataset-root", required=True, help="the benchmarks' source files, laid out as above")
    su.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    su.add_argument(
        "--benchmarks",
        default=None,
        help="comma-separated subset of refcoco,refcoco+,refcocog,pixmo_count,page_ocr,coco (default: "
        "all; missing ones are skipped, named ones must be present)",
    )
    su.add_argument(
        "--model-family",
        default=None,
        choices=MODEL_FAMILIES,
        help="answer frame the splits are prepared for (default: the model's config.json model_type)",
    )
    su.add_argument("--limit", type=int, default=None, help="prepare at most this many rows per split (smoke runs)")
    su.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="image-reading processes")
    su.add_argument("--zh-tokenizer", choices=("auto", "jieba", "char"), default="auto")
    su.add_argument("--no-report", action="store_true", help="skip each split's report.html")
    _engine_args(su)

    ro = sub.add_parser("rollouts", help="HTML page of the rollouts in a trainer.rollout_data_dir")
    ro.add_argument("dir", help="verl's trainer.rollout_data_dir ({step}.jsonl files)")
    ro.add_argument("--data", required=True, nargs="+", help="the training parquet(s) (data.train_files)")
    ro.add_argument("--out", required=True, help="HTML file to write")
    which = ro.add_mutually_exclusive_group()
    which.add_argument("--steps", type=_steps, default=None, help="comma-separated steps, e.g. 1,5,10")
    which.add_argument("--last", type=int, default=None, help="the N latest steps (default 10)")
    ro.add_argument("--top-k", type=int, default=8, help="rollouts shown per section")

    cu = sub.add_parser("curves", help="one PNG and a markdown table of training runs' metrics (verl's file logger)")
    cu.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run folder with metrics.jsonl, or the .jsonl itself")
    cu.add_argument(
        "--group",
        action="append",
        type=_group,
        default=[],
        metavar="NAME=RUN_DIR,RUN_DIR",
        help="draw these runs as one series (mean, min-max band); runs named alike but for a seed "
        "(grpo_seed0, grpo_seed1) are grouped without it (repeatable)",
    )
    cu.add_argument("--out", required=True, help="folder for curves.png and curves.md")
    return parser


def _group(text: str) -> tuple[str, list[str]]:
    name, eq, dirs = text.partition("=")
    runs = [d for d in dirs.split(",") if d.strip()]
    if not eq or not name.strip() or not runs:
        raise argparse.ArgumentTypeError(f"expected NAME=RUN_DIR,RUN_DIR, got {text!r}")
    return name.strip(), runs


def _steps(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps must be comma-separated integers, got {text!r}") from None


def _engine_args(parser: argparse.ArgumentParser) -> None:
    """The generation flags ``generate`` and ``suite`` share."""
    parser.add_argument("--backend", choices=("auto", "vllm", "transformers"), default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--tensor-parallel-size", "--tp", type=int, default=1, help="vLLM only")
    parser.add_argument("--max-model-len", type=int, default=None, help="vLLM only")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM only")
    parser.add_argument("--max-images", type=int, default=1, help="most images in one row (vLLM only)")
    parser.add_argument("--dtype", default="auto", help="transformers only: auto, bfloat16, float32, ...")
    parser.add_argument("--device", default=None, help="transformers only: cuda, cpu, ... (default: cuda if present)")


def _engine_kwargs(args) -> dict:
    return {
        "backend": args.backend,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "tensor_parallel_size": args.tensor_parallel_size,
        "max_model_len": args.max_model_len,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_images": args.max_images,
        "dtype": args.dtype,
        "device": args.device,
    }


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _suite(args) -> int:
    from .suite import SuiteError, run_suite

    check_output(args.out, [args.model, args.dataset_root], "dir")
    try:
        table = run_suite(
            args.model,
            args.dataset_root,
            args.out,
            benchmarks=args.benchmarks,
            model_family=args.model_family,
            limit=args.limit,
            workers=args.workers,
            report=not args.no_report,
            zh_tokenizer=args.zh_tokenizer,
            log=_log,
            **_engine_kwargs(args),
        )
    except SuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(f"{args.out}/suite.md") as f:
        print(f.read())
    return 1 if table["counts"].get("failed") else 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # generate appends after each batch: a rerun resumes
        print(f"interrupted; rerun the same command to resume ({args.command} --out {args.out})", file=sys.stderr)
        return 130


def _run(args) -> int:
    if args.command == "suite":
        return _suite(args)
    if args.command == "generate":
        from .generate import generate

        stats = generate(
            args.model, args.data, args.out, limit=args.limit, logprobs=args.logprobs, log=_log, **_engine_kwargs(args)
        )
        print(
            f"{stats['generated']} generated ({stats['backend']}), {stats['already_done']} already done, "
            f"{stats['rows']} rows in the split -> {args.out}"
        )
        return 0
    if args.command == "rollouts":
        return _rollouts(args)
    if args.command == "curves":
        return _curves(args)
    from .score import score

    check_output(args.out, [args.data, args.responses, args.annotations], "dir")
    metrics = score(
        args.data,
        args.responses,
        args.out,
        annotations=args.annotations,
        zh_tokenizer=args.zh_tokenizer,
        report=not args.no_report,
        top_k=args.top_k,
    )
    for warning in metrics["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    with open(f"{args.out}/metrics.md") as f:
        print(f.read())
    return 0


def _rollouts(args) -> int:
    from .rollouts import rollout_report

    check_output(args.out, [args.dir, *args.data], "html")
    try:
        stats = rollout_report(args.dir, args.data, args.out, steps=args.steps, last=args.last, top_k=args.top_k)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key in (
        "bad_lines",
        "unmatched",
        "ambiguous",
        "index_misses",
        "missing_images",
        "reward_errors",
        "reward_timeout",
        "reward_error",
        "score_mismatches",
    ):
        if stats[key]:
            print(f"warning: {stats[key]} {key.replace('_', ' ')} (listed in the report)", file=sys.stderr)
    if stats["missing_steps"]:
        print(f"warning: no dump for steps {stats['missing_steps']}", file=sys.stderr)
    print(f"{stats['rollouts']} rollouts of steps {stats['steps']}, {stats['matched']} matched -> {args.out}")
    return 0


def _curves(args) -> int:
    from .curves import CurvesError, curves

    groups = dict(args.group)
    if len(groups) < len(args.group):
        print("error: --group names must differ", file=sys.stderr)
        return 2
    try:
        result = curves(args.runs, args.out, groups, log=_log)
    except (CurvesError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result["md"].read_text())
    print(f"{len(result['panels'])} panels of {len(result['series'])} series -> {result['png']}, {result['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
