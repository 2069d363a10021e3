"""``perception-r1-prep <source> ...``: one command for every converter and the parquet check.

``perception-r1-prep coco_det --help`` (or ``python -m perception_r1_verl.data.cli coco_det
--help``) shows a source's flags; the sources are the recipes' task names, so a recipe
prepares its data with ``perception-r1-prep <task>``. ``check`` loads a converted parquet
as verl will and draws rows with their ground truth (exit 1 when a check fails).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

PROG = "perception-r1-prep"
# source -> ("module:function" taking argv, what it reads); modules are imported on use only
SOURCES = {
    "coco_det": ("perception_r1_verl.data.coco_det:main", "COCO-format detection annotations (task detection)"),
    "refcoco": (
        "perception_r1_verl.data.refcoco:main",
        "RefCOCO/+/g: refer toolkit, VLM-R1, lmms-lab, EasyR1, jsonl (grounding)",
    ),
    "pixmo_count": ("perception_r1_verl.data.pixmo_count:main", "PixMo-Count or EasyR1 counting tables (counting)"),
    "page_ocr": ("perception_r1_verl.data.page_ocr:main", "Fox page OCR, EasyR1 or jsonl tables (ocr)"),
    "check": (
        "perception_r1_verl.data.cli:check_main",
        "check a converted parquet as verl reads it; draw rows into a grid",
    ),
}


def converter(source: str):
    """The module of a converter ``source``: its ``main``, and the ``release_args`` / ``sample_args``
    the training recipe prepares its data with.

    >>> converter("coco_det").__name__
    'perception_r1_verl.data.coco_det'
    """
    return importlib.import_module(SOURCES[source][0].split(":")[0])


def check_main(argv=None) -> int:
    """``check``: :func:`~perception_r1_verl.data.check.inspect_parquet` on one parquet."""
    p = argparse.ArgumentParser(prog=f"{PROG} check", description=SOURCES["check"][1])
    p.add_argument("parquet", type=Path)
    p.add_argument("--processor", required=True, type=Path, help="local model or processor folder (Qwen2.5-VL)")
    p.add_argument("--max-rows", type=int, help="check only the first N rows (default: all)")
    p.add_argument("--draw", type=int, default=16, help="rows drawn into the grid (default: 16)")
    p.add_argument("--grid", type=Path, help="PNG to draw into (default: PARQUET with .grid.png)")
    p.add_argument("--reward-kwargs", type=json.loads, default={}, help="JSON of reward settings, as in training")
    args = p.parse_args(argv)

    from perception_r1_verl.data.check import inspect_parquet
    from perception_r1_verl.outputs import OutputError, check_output

    grid = args.grid or args.parquet.with_suffix(".grid.png")
    try:
        check_output(grid, [args.parquet, args.processor], "png")
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = inspect_parquet(
        args.parquet,
        args.processor,
        max_rows=args.max_rows,
        n_draw=args.draw,
        grid=grid,
        reward_kwargs=args.reward_kwargs,
    )
    for problem in report.problems[:50]:
        print(problem)
    print(
        f"{args.parquet}: {report.checked} of {report.rows} rows checked, {len(report.problems)} problems; "
        f"grid: {report.grid}"
    )
    return 0 if report.ok else 1


def main(argv=None) -> int:
    """Dispatch ``argv`` (default: ``sys.argv[1:]``) to its source's ``main``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog="sources:\n" + "\n".join(f"  {name:<12} {what}" for name, (_, what) in SOURCES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", choices=SOURCES, help="what to convert (or check); SOURCE --help for its flags")
    args = p.parse_args(argv[:1])  # the source's own parser reads the rest, --help included
    module, function = SOURCES[args.source][0].split(":")
    return getattr(importlib.import_module(module), function)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
