"""The command line every converter shares: its flags, its options, its end-of-run summary."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from perception_r1_verl import frames
from perception_r1_verl.data.driver import summary_path
from perception_r1_verl.data.options import IMAGE_STORES, ConvertOptions
from perception_r1_verl.data.rules import DataError
from perception_r1_verl.families import MODEL_FAMILIES, family, family_of_model
from perception_r1_verl.outputs import OutputError, check_output


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The flags every converter CLI shares."""
    parser.add_argument("--out", required=True, type=Path, help="output parquet file")
    parser.add_argument("--split", default="train", help="split name written to extra_info (default: train)")
    parser.add_argument("--limit", type=int, help="stop after this many rows, drawn at random (see --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit draw (default: 0)")
    parser.add_argument(
        "--model-family",
        choices=MODEL_FAMILIES,
        help="the answer frame the rows are written for (default: --model's, else qwen2_5_vl)",
    )
    parser.add_argument(
        "--model",
        help="the model to train: a local folder (its config.json model_type) or a hub name; gives --model-family",
    )
    parser.add_argument(
        "--min-pixels",
        type=int,
        help=f"default {frames.DEFAULT_MIN_PIXELS}, {family('qwen3_vl').min_pixels} for qwen3_vl and qwen3_5 (their processor's minimum)",
    )
    parser.add_argument("--max-pixels", type=int, default=frames.DEFAULT_MAX_PIXELS)
    parser.add_argument("--think", action="store_true", help="ask for <think>...</think><answer>...</answer>")
    parser.add_argument("--strict", action="store_true", help="bad input is an error naming the record")
    parser.add_argument("--workers", type=int, default=0, help="processes that read images (default: 0, inline)")
    parser.add_argument(
        "--image-store",
        default="original",
        choices=IMAGE_STORES,
        help="store the original file bytes, or the image already resized to the model input (smaller files)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def path_flags(paths: dict[str, Path]) -> list[str]:
    """A converter's path inputs as its flags, in order.

    >>> path_flags({"table": Path("/d/t.parquet"), "images": Path("/d/images")})
    ['--table', '/d/t.parquet', '--images', '/d/images']
    """
    return [flag for name, path in paths.items() for flag in (f"--{name}", str(path))]


def model_family_from_args(args: argparse.Namespace) -> str:
    """``--model-family``, else the family ``--model`` is read as, else ``qwen2_5_vl``; a
    ``--model`` of no known family is an error that asks for ``--model-family``."""
    if args.model_family or not args.model:
        return args.model_family or "qwen2_5_vl"
    try:
        return family_of_model(args.model)
    except ValueError as e:
        raise DataError(f"{e}: pass --model-family") from None


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    return ConvertOptions(
        split=args.split,
        model_family=model_family_from_args(args),
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        think=args.think,
        limit=args.limit,
        seed=args.seed,
        strict=args.strict,
        workers=args.workers,
        image_store=args.image_store,
        progress=not args.no_progress,
    )


def print_summary(summary: dict, file=None) -> None:
    """The end-of-run report (to ``file``, default the current ``sys.stderr``): rows written and every rule hit."""
    file = file or sys.stderr
    print(
        f"{summary['source']}: wrote {summary['rows']} rows from {summary['records_visited']} of "
        f"{summary['records']} records to {summary['out']} ({summary['rows_per_second']} rows/s)",
        file=file,
    )
    for rule, info in summary["rules"].items():
        print(f"  {rule}: {info['count']}  [{info['rule']}]  e.g. {info['examples'][0]}", file=file)
    print(f"  summary: {summary_path(Path(summary['out']))}", file=file)


def run_cli(
    parser: argparse.ArgumentParser, argv, convert_fn: Callable[[argparse.Namespace, ConvertOptions], dict]
) -> int:
    """Parse, convert, print the summary; bad input under --strict exits 2 with its message."""
    args = parser.parse_args(argv)
    try:
        inputs = _input_paths(args)
        check_output(args.out, inputs, "parquet")
        check_output(summary_path(args.out), inputs)
        summary = convert_fn(args, options_from_args(args))
    except (DataError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    if not summary["rows"]:
        print(
            f"error: no row was written to {args.out}: every record was skipped (see the rules above)", file=sys.stderr
        )
        return 2
    return 0


def _input_paths(args: argparse.Namespace) -> list[Path]:
    """Every path flag of a converter but ``--out``: its input files and folders."""
    values = [v for k, v in vars(args).items() if k != "out"]
    return [p for v in values for p in (v if isinstance(v, list) else [v]) if isinstance(p, Path)]
