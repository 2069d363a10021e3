"""The preflight of ``recipes/<task>.sh``: data, config check, reward check, then the launch plan.

``python -m perception_r1_verl.recipe TASK --config-dir recipes/config [--plan FILE] [overrides...]``
prints the launch command; ``--plan`` writes, for the shell recipe to source, the environment's
overrides (``OVERRIDES``), whether to launch (``LAUNCH``) and the variables the launch needs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from perception_r1_verl.recipe.config import compose, launch_command, validate
from perception_r1_verl.recipe.data import prepare_data, read_rows
from perception_r1_verl.recipe.overrides import env_overrides
from perception_r1_verl.recipe.reward_check import check_scores, print_scores, score_rows
from perception_r1_verl.recipe.settings import (
    Settings,
    cuda_gpu_count,
    env_flag,
    flash_attn_error,
    linear_attention_kernels_error,
)
from perception_r1_verl.recipe.tasks import MIX, TASKS, task_named
from perception_r1_verl.recipe.zero_shot import preflight_rows, zero_shot


def plan_text(overrides: list[str], launch: bool, env: dict[str, str]) -> str:
    """The plan as bash: the overrides array, the launch decision, the exported variables.

    >>> print(plan_text(["a.b='.*x.*'", "c=1"], True, {"HF_HUB_OFFLINE": "1"}))
    OVERRIDES=('a.b='"'"'.*x.*'"'"'' c=1)
    LAUNCH=1
    export HF_HUB_OFFLINE=1
    <BLANKLINE>
    """
    lines = [f"OVERRIDES=({' '.join(map(shlex.quote, overrides))})", f"LAUNCH={int(launch)}"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    return "\n".join(lines) + "\n"


def val_files_of(config) -> list[str]:
    """``data.val_files``, one file or a list (a mix), as a list."""
    files = config.data.val_files
    return [files] if isinstance(files, str) else list(files)


def reward_check(config, rows_per_file: int, allow_offline: bool) -> list[str]:
    """Score the first rows of every val file through the configured manager; the problems found."""
    val_files = val_files_of(config)
    print(
        f"[recipe] scoring {rows_per_file} val rows of each of {len(val_files)} val file(s) through the reward "
        f"manager {config.reward.reward_manager.name!r}"
    )
    per_file = {f: read_rows(Path(f), rows_per_file) for f in val_files}
    empty = [f for f, rows in per_file.items() if not rows]
    if empty:  # nothing to score would pass every check: say so instead
        return [f"{f} holds no rows to score (delete it to prepare it again)" for f in empty]
    results = score_rows(config, [row for rows in per_file.values() for row in rows], allow_offline=allow_offline)
    print_scores(results)
    reward_kwargs = config.reward.get("custom_reward_function", {}).get("reward_kwargs") or {}
    return check_scores(results, dict(reward_kwargs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perception_r1_verl.recipe",
        description="Prepare data, check the verl config and plan the launch of one Perception-R1 training recipe.",
    )
    parser.add_argument("task", choices=[*sorted(TASKS), MIX.name])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, after the config file's and the recipe's")
    parser.add_argument("--config-dir", type=Path, required=True, help="the recipes' config folder (recipes/config)")
    parser.add_argument("--rows", type=int, default=4, help="rows scored through the reward manager (default 4)")
    parser.add_argument("--plan", type=Path, help="write the launch plan here, as bash (recipes/common.sh)")
    args = parser.parse_intermixed_args(argv)  # options before or after the overrides

    task = task_named(args.task)
    config_dir = args.config_dir.expanduser().resolve()
    gpus = cuda_gpu_count()
    settings = Settings.from_env(task, gpus=gpus)
    dry_run = env_flag(os.environ, "DRY_RUN")

    prepare_data(task, settings)
    if not settings.flash_attn:
        print(
            f"[recipe] flash-attn does not import here ({flash_attn_error()}): training uses sdpa attention "
            "without remove-padding (slower, more memory)",
            flush=True,
        )
    if not settings.packed_ok:
        print(
            f"[recipe] {settings.model_family} has Gated DeltaNet layers and fla's kernels are not used here "
            f"({linear_attention_kernels_error()}): use_remove_padding=False, since verl's packed path would "
            "leak their state between packed sequences (transformers' torch fallback ignores cu_seqlens)",
            flush=True,
        )
    overrides = env_overrides(task, settings)
    print(f"[recipe] composing {config_dir / task.name}.yaml and running validate_config", flush=True)
    config = compose(config_dir, task.name, overrides + args.overrides)
    validate(config)

    problems = reward_check(config, args.rows, allow_offline=not gpus)
    if problems:
        print("[recipe] the rewards disagree with the prepared data:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1

    command = launch_command(config_dir, task.name, overrides + args.overrides)
    launch = bool(gpus) and not dry_run
    if launch and settings.uses_sample and not env_flag(os.environ, "SAMPLE_RUN"):
        print(
            f"[recipe] The data is the offline sample (DATASET_ROOT is unset and {settings.data_dir} holds no "
            "train/val parquet): not training on it. Set DATASET_ROOT (see docs/recipe_config.md), "
            "or SAMPLE_RUN=1 for a smoke run on the sample.\n" + shlex.join(command),
            file=sys.stderr,
        )
        return 1
    rows = preflight_rows(os.environ.get("PREFLIGHT_ROWS"), launch)
    if rows:
        print(f"[recipe] zero-shot preflight: {settings.model_path} on {rows} val rows of each task", flush=True)
        problems = zero_shot(
            settings.model_path,
            val_files_of(config),
            rows,
            settings.data_dir / "preflight",
            config.data.max_response_length,
        )
        if problems:
            print(
                "[recipe] the model answers in another coordinate frame than the data expects; not training:\n  "
                + "\n  ".join(problems)
                + "\n(PREFLIGHT_ROWS=0 skips this check)",
                file=sys.stderr,
            )
            return 1
    if args.plan:
        # load_tokenizer sets HF_HUB_OFFLINE when the hub does not answer: the trainer's workers need it too.
        exported = {"HF_HUB_OFFLINE": "1"} if os.environ.get("HF_HUB_OFFLINE") == "1" else {}
        args.plan.write_text(plan_text(overrides, launch, exported))
    if launch and args.plan:
        print(f"[recipe] launching on {gpus} GPU(s): {shlex.join(command)}", flush=True)
        return 0
    print("[recipe] launch command:\n" + shlex.join(command))
    if dry_run:
        print("[recipe] DRY_RUN is set: not launching.")
    elif launch:
        print(f"[recipe] Ready to train on {gpus} GPU(s): run the command above (recipes/{task.name}.sh does).")
    else:
        print(
            "[recipe] No CUDA GPU here: everything up to the launch is done, but training needs GPUs "
            f"({settings.nnodes} node(s) x {settings.n_gpus_per_node}). Run the same command on a GPU machine."
        )
    return 0
