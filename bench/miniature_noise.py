"""The miniature reproduction's run-to-run noise, over seeds, and what a broken reward does to it.

    bash scripts/e2e.sh                     # once: its venv has verl and vLLM for CPU
    .venv-e2e/bin/python bench/miniature_noise.py OUT_DIR --seeds 0 1 2 [--broken]

Runs tests/e2e/miniature.py (SFT, GRPO through refcoco.sh, held-out evaluation; no resume)
once per seed, then with ``--broken`` twice more on the first seed with a broken reward
(BROKEN): the whole reward negated, and its IoU term alone negated (the reward pays for
missing the box). Prints a markdown table of the held-out metric of the SFT and GRPO
checkpoints and of the training reward per seed with CI's verdict on each, the seeds'
standard deviations, and how many seeds pass CI's check (tests/e2e/miniature.py THRESHOLDS).
Writes OUT_DIR/noise.json, OUT_DIR/noise.md and, per run, OUT_DIR/curves/<run>/metrics.jsonl: verl's metrics plus the
held-out metric of the SFT start (step 0) and of the GRPO checkpoint (last step) as
``eval/heldout/<metric>``, for ``perception-r1-eval curves OUT_DIR/curves/seed*``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

import check  # noqa: E402
import miniature  # noqa: E402

_KWARGS = "+reward.custom_reward_function.reward_kwargs"
BROKEN = {
    "reward_negated": (f"{_KWARGS}.iou_weight=-1", f"{_KWARGS}.format_weight=-1"),
    "iou_negated": (f"{_KWARGS}.iou_weight=-1",),
}


def curve_file(result: dict, run_dir: Path, out: Path) -> Path:
    """verl's metrics of ``run_dir`` with the held-out metric of SFT (step 0) and GRPO (last step)."""
    key = f"eval/heldout/{result['metric']}"
    records = check.records(run_dir)
    last = max(r["step"] for r in records)
    records += [
        {"step": 0, "data": {key: result["heldout"]["sft"][result["metric"]]}},
        {"step": last, "data": {key: result["heldout"]["grpo"][result["metric"]]}},
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def row(name: str, result: dict) -> str:
    metric = result["metric"]
    sft, grpo = result["heldout"]["sft"][metric], result["heldout"]["grpo"][metric]
    first, last = result["reward_thirds"]
    verdict = "; ".join(miniature.check_result(result)) or "pass"
    return f"| {name} | {sft:.4f} | {grpo:.4f} | {grpo - sft:+.4f} | {first:.3f} | {last:.3f} | {verdict} |"


def summary(results: dict[str, dict]) -> dict:
    """Per-checkpoint mean and standard deviation over the seeds, and the threshold they give."""
    seeds = [r for name, r in results.items() if name.startswith("seed")]
    metric = seeds[0]["metric"]
    out = {}
    for kind in ("sft", "grpo"):
        values = [r["heldout"][kind][metric] for r in seeds]
        out[kind] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    gains = [r["heldout"]["grpo"][metric] - r["heldout"]["sft"][metric] for r in seeds]
    out["gain"] = {"mean": statistics.mean(gains), "min": min(gains)}
    out["passed"] = sum(not miniature.check_result(r) for r in seeds)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--broken", action="store_true", help="two more runs of the first seed, with BROKEN rewards")
    p.add_argument("--resume", action="store_true", help="keep the runs OUT_DIR/noise.json holds, run the others")
    args = p.parse_args(argv)
    out = args.out.resolve()
    runs = {f"seed{s}": (s, ()) for s in args.seeds}
    if args.broken:
        runs.update({name: (args.seeds[0], extra) for name, extra in BROKEN.items()})
    results = json.loads((out / "noise.json").read_text())["results"] if args.resume else {}
    for name, (seed, extra) in runs.items():
        if name not in results:
            results[name] = miniature.run(out / name, seed=seed, extra=extra, with_resume=False)
            curve_file(results[name], out / name / "runs" / "grpo", out / "curves" / name)
    stats = summary(results)
    metric = next(iter(results.values()))["metric"]
    lines = [
        f"| run | SFT held-out {metric} | GRPO held-out {metric} | gain | reward, first third | reward, last third "
        "| CI's check (tests/e2e/miniature.py THRESHOLDS) |",
        "|---|---|---|---|---|---|---|",
        *(row(name, r) for name, r in sorted(results.items(), key=lambda item: not item[0].startswith("seed"))),
        "",
        f"Over seeds {args.seeds}: SFT {stats['sft']['mean']:.4f} ± {stats['sft']['std']:.4f}, "
        f"GRPO {stats['grpo']['mean']:.4f} ± {stats['grpo']['std']:.4f} (standard deviation); "
        f"gain {stats['gain']['mean']:+.4f} on average, {stats['gain']['min']:+.4f} at least. "
        f"CI's check (held-out gain > {miniature.THRESHOLDS['heldout_gain']}, rising training reward) "
        f"passed {stats['passed']} of {len(args.seeds)} seeds.",
    ]
    (out / "noise.md").write_text("\n".join(lines) + "\n")
    (out / "noise.json").write_text(json.dumps({"results": results, "summary": stats}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
