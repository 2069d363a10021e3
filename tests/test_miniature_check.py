"""CI's verdict on the miniature (tests/e2e/miniature.py) and the threshold rule behind it
(bench/miniature_noise.py's summary), on results shaped like the runs' result.json."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "e2e"), str(ROOT / "bench")]

import miniature  # noqa: E402
import miniature_noise  # noqa: E402


def result(sft: float, grpo: float, rewards: list[float], seed: int = 0) -> dict:
    return {
        "seed": seed,
        "metric": "mIoU",
        "heldout": {"sft": {"mIoU": sft}, "grpo": {"mIoU": grpo}},
        "reward_by_step": rewards,
        "entropy_by_step": [1.4] * len(rewards),
        "reward_thirds": miniature.thirds(rewards),
    }


def test_a_run_that_learned_passes():
    assert miniature.check_result(result(0.0002, 0.0847, [0.3, 0.4, 0.5, 0.6, 0.6, 0.7])) == []


def test_a_held_out_gain_within_the_starts_noise_fails():
    problems = miniature.check_result(
        result(0.0002, 0.0002 + miniature.THRESHOLDS["heldout_gain"] / 2, [0.1] * 3 + [0.5] * 3)
    )
    assert problems[0].startswith("held-out mIoU: GRPO")
    assert len(problems) == 1
    trajectory = miniature.trajectory(result(0.0, 0.0, [0.1] * 3 + [0.5] * 3))
    assert trajectory == "by step: reward [0.1, 0.1, 0.1, 0.5, 0.5, 0.5], entropy [1.4, 1.4, 1.4, 1.4, 1.4, 1.4]"


def test_a_falling_training_reward_fails():
    problems = miniature.check_result(result(0.0, 0.09, [0.23, 0.23, 0.2, 0.2, 0.2, 0.205]))
    assert problems == ["training reward: last third 0.2025 vs first third 0.2300"]


def test_the_bench_summary_counts_the_seeds_that_pass_ci():
    runs = {
        f"seed{i}": result(sft, grpo, [0.2, 0.5, 0.6], seed=i)
        for i, (sft, grpo) in enumerate([(0.0, 0.08), (0.002, 0.1), (0.001, 0.06), (0.073, 0.005)])
    }
    runs["reward_negated"] = result(0.0, 0.0, [0.0, 0.0, 0.0])
    stats = miniature_noise.summary(runs)
    assert stats["sft"]["mean"] == pytest.approx(0.019) and stats["grpo"]["mean"] == pytest.approx(0.06125)
    assert stats["gain"]["min"] == pytest.approx(-0.068)
    assert stats["passed"] == 3  # of the four seeds; the broken run is not a seed
    assert "needs >" in miniature_noise.row("reward_negated", runs["reward_negated"])
