"""The recipe's data: ``perception-r1-prep <task>`` for each missing split, from the release or the offline sample.

Each converter module (``perception_r1_verl.data.<source>``) declares its task's sources:
``release_args(split, root)`` for the public release under ``DATASET_ROOT``, and
``sample_args(sources)`` for the offline sample.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from perception_r1_verl import frames
from perception_r1_verl.data.cli import converter
from perception_r1_verl.recipe.settings import Settings
from perception_r1_verl.recipe.tasks import Task

SAMPLE_IMAGES = {"train": 32, "val": 8}
PREP_WORKERS = 8


def source_args(task: Task, settings: Settings, split: str) -> list[str]:
    """The converter's input flags: the offline sample, or the release under ``DATASET_ROOT``."""
    module = converter(task.name)
    if settings.uses_sample:
        from perception_r1_verl.data.sample import make_sample_sources

        # Seeds differ per split, so val images are not train images.
        sample_dir = settings.data_dir / "sample" / split
        return module.sample_args(make_sample_sources(sample_dir, n_images=SAMPLE_IMAGES[split], seed=len(split)))
    # A full release is worth reading images in parallel (COCO train2017: 118k images).
    workers = min(PREP_WORKERS, os.cpu_count() or 1)
    return ["--workers", str(workers), *module.release_args(split, settings.dataset_root)]


def prep_command(task: Task, settings: Settings, split: str) -> list[str]:
    """``perception-r1-prep <task>`` for one split: from ``DATASET_ROOT``, else the offline sample.

    Run as ``python -m`` with this interpreter, so it needs neither the console script on
    ``PATH`` nor a source checkout.
    """
    limit = settings.train_limit if split == "train" else settings.val_limit
    command = [
        sys.executable,
        "-m",
        "perception_r1_verl.data.cli",
        task.name,
        "--out",
        str(settings.parquet(split)),
        "--split",
        split,
        "--seed",
        str(settings.seed),
        "--model-family",
        settings.model_family,
        "--max-pixels",
        str(frames.DEFAULT_MAX_PIXELS),
    ]  # fmt: skip  (no --min-pixels: the converter takes the family's, 65536 for Qwen3-VL)
    if limit:
        command += ["--limit", str(limit)]
    if settings.think:
        command.append("--think")
    return command + source_args(task, settings, split)


def read_rows(parquet: Path, n: int) -> list[dict]:
    """The first ``n`` rows' ``data_source``, ``reward_model`` and ``extra_info``."""
    import pyarrow.parquet as pq

    table = pq.read_table(parquet, columns=["data_source", "reward_model", "extra_info"])
    return table.slice(0, n).to_pylist()


def prepared_for(parquet: Path) -> tuple[str, bool] | None:
    """The ``model_family`` and ``think`` a prepared parquet's first row was converted for."""
    rows = read_rows(parquet, 1)
    return (rows[0]["extra_info"].get("model_family"), bool(rows[0]["extra_info"].get("think"))) if rows else None


def prepare_data(task: Task, settings: Settings) -> None:
    """Write the train and val parquet files that are missing (existing ones are kept).

    A mix prepares each of its tasks, then counts the training rows each contributes.
    """
    if settings.mix:
        from perception_r1_verl.data.mix import mix_report, parquet_rows

        for part_task, part in settings.components():
            prepare_data(part_task, part)
        got = {
            name: parquet_rows(path) for (name, _), path in zip(settings.mix, settings.data_files("train"), strict=True)
        }
        lines, problems = mix_report(dict(settings.mix), got)
        print("[recipe] training mix:\n  " + "\n  ".join(lines))
        if problems:
            raise SystemExit(
                "the prepared training files do not match MIX (delete them to prepare again):\n  "
                + "\n  ".join(problems)
            )
        return
    for split in ("train", "val"):
        out = settings.parquet(split)
        if out.exists():
            prepared = prepared_for(out)
            if prepared is None:
                raise SystemExit(f"{out} holds no rows: delete it to prepare it again")
            wanted = (settings.model_family, settings.think)
            if prepared != wanted:
                raise SystemExit(
                    f"{out} was prepared for {_described(*prepared)}, the run is {_described(*wanted)}: "
                    "delete it or point DATA_DIR elsewhere"
                )
            print(f"[recipe] {split}: using {out}")
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        command = prep_command(task, settings, split)
        print(f"[recipe] {split}: {shlex.join(command)}", flush=True)
        if subprocess.run(command).returncode:
            raise SystemExit(
                f"perception-r1-prep {task.name} could not prepare the {split} split (its error and summary "
                "are printed above); nothing is launched"
            )
        if not out.exists():
            raise SystemExit(f"perception-r1-prep {task.name} finished without writing {out}")


def _described(model_family: str, think: bool) -> str:
    """``qwen3_5`` or ``qwen3_5 with thinking`` (THINK=1)."""
    return model_family + (" with thinking" if think else "")
