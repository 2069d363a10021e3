"""Assertions on what verl itself wrote for one launch (tests/e2e/launch.py's RUN_DIR).

Read: RUN_DIR/metrics.jsonl (verl's file logger: {"step", "data"} per line),
RUN_DIR/console.log, RUN_DIR/rollouts/<step>.jsonl (trainer.rollout_data_dir) and
RUN_DIR/checkpoints (trainer.default_local_dir). Each check raises AssertionError naming
what is wrong; run_all.py calls them per launch.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

from perception_r1_verl import rewards
from perception_r1_verl.plugin.step_metrics import PREFIX
from perception_r1_verl.rewards import COUNTERS


def records(run_dir: Path) -> list[dict]:
    """The file logger's lines, in order."""
    path = run_dir / "metrics.jsonl"
    assert path.exists(), f"{path}: verl's file logger wrote nothing"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_steps(run_dir: Path) -> dict[int, dict]:
    """Training steps' metrics by step (the records carrying critic/score/mean)."""
    return {r["step"]: r["data"] for r in records(run_dir) if "critic/score/mean" in r["data"]}


def finite(metrics: dict, key: str) -> float:
    assert key in metrics, f"{key} not logged (logged: {sorted(k for k in metrics if k.startswith(PREFIX))})"
    value = metrics[key]
    assert isinstance(value, (int, float)) and math.isfinite(value), f"{key} = {value!r}, not finite"
    return float(value)


def component_keys(tasks) -> tuple[str, ...]:
    """The per-step keys of ``tasks``' rows: score, every reward component, the counters."""
    return tuple(dict.fromkeys(k for t in tasks for k in ("score", *rewards.get_reward_cls(t).components, *COUNTERS)))


SIGNAL_KEYS = ("groups/zero_signal", "groups/reward_std", "truncated")


def check_steps(run_dir: Path, sources: dict[str, str], expect_steps: list[int]) -> dict[int, dict]:
    """Steps ``expect_steps`` ran, each logging finite scores and every reward component, overall
    and per data source for each source (``sources``: data source -> task) its rollouts came from;
    every source of ``sources`` appears in some step."""
    steps = train_steps(run_dir)
    assert sorted(steps) == expect_steps, f"training steps logged: {sorted(steps)}, expected {expect_steps}"
    seen = set()
    for step, metrics in steps.items():
        finite(metrics, "critic/score/mean")
        present = {row["data_source"] for row in rollout_rows(run_dir, step)}
        assert present <= set(sources), f"step {step}: rollouts of {present - set(sources)}"
        seen |= present
        for key in component_keys(sources[s] for s in present):
            finite(metrics, f"{PREFIX}/{key}/mean")
        for source in present:
            for key in component_keys([sources[source]]):
                finite(metrics, f"{PREFIX}/{source}/{key}/mean")
            for key in SIGNAL_KEYS:  # the learning signal per data source (rewards/signal.py)
                finite(metrics, f"{PREFIX}/{source}/{key}")
        for counter in COUNTERS:
            assert metrics[f"{PREFIX}/{counter}/mean"] == 0, (
                f"step {step}: {counter} = {metrics[f'{PREFIX}/{counter}/mean']}"
            )
    # FILTER_GROUPS=1 trains on groups that differ only: a source whose groups are all flat
    # (a random model's boxes) may never reach a step.
    if not any(EVICTED in metrics for metrics in steps.values()):
        assert seen == set(sources), f"no training rollouts of {set(sources) - seen}"
    return steps


EVICTED = "training/filter_groups/evicted_samples"


def check_filter_groups(run_dir: Path, steps: dict[int, dict], batch_size: int) -> int:
    """``FILTER_GROUPS=1`` did its job: some step evicted zero-variance groups (verl's
    ``filter_groups/*`` metrics) and was refilled to ``batch_size`` groups, every one of them
    with rewards that differ. Returns that step."""
    evicted = {step: m[EVICTED] for step, m in steps.items() if m.get(EVICTED, 0) > 0}
    assert evicted, f"no step evicted a group: {EVICTED} = {[m.get(EVICTED) for m in steps.values()]}"
    step = min(evicted)
    scores: dict[str, set] = {}
    for row in rollout_rows(run_dir, step):
        scores.setdefault(row["uid"].rsplit("_", 2)[0], set()).add(round(row["score"], 6))
    assert len(scores) == batch_size, f"step {step}: {len(scores)} groups trained, not refilled to {batch_size}"
    flat = [uid for uid, values in scores.items() if len(values) == 1]
    assert not flat, f"step {step}: zero-variance groups {flat} trained despite filter_groups"
    return step


def check_validation(run_dir: Path, sources: dict[str, str]) -> dict:
    """Validation before training logged val-aux/<data_source>/<component>/mean@1 for every source."""
    first = records(run_dir)[0]["data"]
    for source, task in sources.items():
        for key in component_keys([task]):
            finite(first, f"val-aux/{source}/{key}/mean@1")
        for counter in COUNTERS:
            assert first[f"val-aux/{source}/{counter}/mean@1"] == 0, f"validation {source} {counter} non-zero"
    return first


# verl's no-op samples that fill a step to whole mini-batches (trainer/ppo/padding_utils.py:
# uid f"pad{uuid4().hex}", score 0, empty response): dumped with the rollouts, never scored.
PADDING_UID = "pad"


def rollout_rows(run_dir: Path, step: int) -> list[dict]:
    """A step's dumped rollouts, without verl's padding samples."""
    path = run_dir / "rollouts" / f"{step}.jsonl"
    assert path.exists(), f"{path}: verl dumped no rollouts for step {step}"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if not row["uid"].startswith(PADDING_UID)]


def check_rescored(run_dir: Path, steps: list[int], extra_infos: dict[tuple[str, int], dict]) -> dict[int, float]:
    """Every dumped rollout, rescored with compute_score (with its row's ``extra_info``, by data
    source and index), gets the score verl logged for it.

    Returns the seconds rescoring each step's rollouts took (the reward's own cost).
    """
    seconds = {}
    for step in steps:
        rows = rollout_rows(run_dir, step)
        start = time.perf_counter()
        for row in rows:
            info = extra_infos[row["data_source"], row["index"]]
            got = rewards.compute_score(row["data_source"], row["output"], row["gts"], info)["score"]
            assert abs(got - row["score"]) < 1e-4, (
                f"step {step} {row['uid']}: verl logged {row['score']}, compute_score gives {got} for {row['output']!r}"
            )
        seconds[step] = time.perf_counter() - start
    return seconds


def group_sizes(run_dir: Path, step: int) -> Counter:
    """Responses per prompt in a step's dump (uid keys are "<prompt uid>_<rollout>_<output>")."""
    return Counter(row["uid"].rsplit("_", 2)[0] for row in rollout_rows(run_dir, step))


# torch's SIGCHLD handler in the TaskRunner when a dataloader worker dies before it
# (torch/utils/data/_utils/signal_handling.py): what a run ended with before the plugin's fix.
KILLED_WORKER = ("is killed by signal", "exited unexpectedly")


def check_clean_exit(run_dir: Path) -> None:
    """The console reports no dataloader worker killed (verl_patches.releasing_train_iterator)."""
    console = (run_dir / "console.log").read_text()
    found = [line for line in console.splitlines() if any(text in line for text in KILLED_WORKER)]
    assert not found, f"{run_dir / 'console.log'}: {found[:3]}"


def check_checkpoint(run_dir: Path, step: int) -> None:
    folder = run_dir / "checkpoints" / f"global_step_{step}"
    assert (folder / "actor").is_dir() and (folder / "data.pt").exists(), f"no checkpoint at {folder}"


def check_lora_checkpoint(folder: Path, rank: int) -> None:
    """A LoRA run's actor checkpoint records its PEFT adapter of ``rank`` (verl writes lora_train_meta.json)."""
    meta = folder / "actor" / "lora_train_meta.json"
    assert meta.exists(), f"{meta}: no LoRA adapter in the checkpoint"
    assert json.loads(meta.read_text())["r"] == rank, f"{meta}: {meta.read_text()}"


def check_resumed(run_dir: Path, checkpoints: Path, from_step: int) -> None:
    """The console says verl resumed from the checkpoint of ``from_step`` in ``checkpoints``."""
    expected = f"Resuming from {checkpoints / f'global_step_{from_step}'}, setting global step to {from_step}"
    assert expected in (run_dir / "console.log").read_text(), f"console.log lacks {expected!r}"


def check_learning(steps: dict[int, dict]) -> None:
    """Some step had rewards differing within a group: non-zero advantages and gradient.

    Its pg_loss is only checked finite: on-policy GRPO (ratio 1, one update per batch) has
    pg_loss = -mean(advantage), zero up to rounding since each group's advantages are
    normalised to mean 0; the gradient is what moves the policy (see check_weights_moved).
    """
    assert any(
        m["critic/advantages/max"] != m["critic/advantages/min"] and m["actor/grad_norm"] > 0 for m in steps.values()
    ), "no step with non-zero advantages and grad_norm: " + str(
        {
            s: {k: m[k] for k in ("critic/advantages/max", "critic/advantages/min", "actor/grad_norm")}
            for s, m in steps.items()
        }
    )
    for metrics in steps.values():
        finite(metrics, "actor/pg_loss")


def check_weight_sync(steps: dict[int, dict]) -> None:
    """The rollout engine serves the trainer's weights: per token, vLLM's probabilities of its
    samples correlate with the trainer's recomputed ones (verl's rollout_corr metrics).

    vLLM starts from dummy weights (verl's default ``rollout.load_format=dummy``; a LoRA run
    loads the base and syncs the adapter), so without verl's weight sync it would sample
    near-uniform tokens at near-constant probability, uncorrelated with the trainer's. The
    values differ (vLLM reports probabilities after top-k/top-p, ``logprobs_mode=
    processed_logprobs``); their correlation does not depend on that.
    """
    for step, metrics in steps.items():
        corr = finite(metrics, "training/rollout_actor_probs_pearson_corr")
        assert corr > 0.5, f"step {step}: rollout vs trainer token-probability correlation {corr:.3f}"


def check_weights_moved(initial: Path, merged: Path) -> int:
    """The merged checkpoint's weights differ from the initial model's; returns how many elements.

    Both are bf16: an lr-1e-6 Adam step moves every weight by about 1e-6, visible in bf16
    on the many small-magnitude weights only, so this counts elements, it does not measure.
    """
    from safetensors.torch import load_file

    before = {k: v for f in sorted(initial.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    after = {k: v for f in sorted(merged.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    common = sorted(set(before) & set(after))
    assert common, f"no common tensors between {initial} and {merged}"
    changed = sum(int((before[k].float() != after[k].float()).sum()) for k in common)
    assert changed > 0, f"{merged}: every weight equals the initial model's after training"
    return changed


def check_generation_fields(responses: list[dict]) -> dict:
    """``generate --logprobs`` lines from a real engine: each says why it stopped, and its
    log-probabilities either spell the response token by token or say why not; the counts.

    >>> check_generation_fields([{"response": "[1]", "finish_reason": "stop", "logprobs": [-0.1, 0.0], "token_ends": [2, 3]},
    ...                          {"response": "x", "finish_reason": "length", "logprobs_error": "the tokens do not spell"}])
    {'stop': 1, 'length': 1, 'aligned': 1, 'not_aligned': 1}
    """
    counts = {"stop": 0, "length": 0, "aligned": 0, "not_aligned": 0}
    for r in responses:
        assert r.get("finish_reason") in ("stop", "length"), f"finish_reason of {r}"
        counts[r["finish_reason"]] += 1
        if "logprobs_error" in r:
            counts["not_aligned"] += 1
            continue
        lps, ends = r["logprobs"], r["token_ends"]
        ok = len(lps) == len(ends) and all(lp <= 0 for lp in lps) and ends == sorted(set(ends))
        assert ok and (ends[-1] if ends else 0) == len(r["response"]), f"token log-probabilities of {r}"
        counts["aligned"] += 1
    return counts
