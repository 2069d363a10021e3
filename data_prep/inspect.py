"""Check a converted parquet as verl will read it, and draw rows with their ground truth.

    python data_prep/inspect.py train.parquet --processor /models/Qwen2.5-VL-3B-Instruct --grid rows.png

Exits 1 when a check fails (image size or tokens differ from extra_info, or the ground
truth written as an answer does not score the reward's maximum); see README, *Preparing data*.
"""

import os
import sys

# This file's name shadows the standard library's inspect module for anything run from here.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="data_prep/inspect.py", description=__doc__.splitlines()[0])
    p.add_argument("parquet", type=Path)
    p.add_argument("--processor", required=True, type=Path, help="local model or processor folder (Qwen2.5-VL)")
    p.add_argument("--max-rows", type=int, help="check only the first N rows (default: all)")
    p.add_argument("--draw", type=int, default=16, help="rows drawn into the grid (default: 16)")
    p.add_argument("--grid", type=Path, help="PNG to draw into (default: PARQUET with .grid.png)")
    p.add_argument("--reward-kwargs", type=json.loads, default={}, help="JSON of reward settings, as in training")
    args = p.parse_args(argv)

    from perception_r1_verl.data.check import inspect_parquet

    report = inspect_parquet(
        args.parquet,
        args.processor,
        max_rows=args.max_rows,
        n_draw=args.draw,
        grid=args.grid or args.parquet.with_suffix(".grid.png"),
        reward_kwargs=args.reward_kwargs,
    )
    for problem in report.problems[:50]:
        print(problem)
    print(
        f"{args.parquet}: {report.checked} of {report.rows} rows checked, {len(report.problems)} problems; "
        f"grid: {report.grid}"
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
