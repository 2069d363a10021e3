"""The recipe's environment variables, read once, and what the machine offers (GPUs, flash-attn, fla)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from perception_r1_verl.data.mix import parse_mix
from perception_r1_verl.families import MODEL_FAMILIES, family, family_of_model
from perception_r1_verl.recipe.tasks import DEFAULT_MIX, MIX, TASKS, Task


def env_int(env, name: str, default: int | None) -> int | None:
    """``env[name]`` as an integer, ``default`` when unset or blank.

    >>> env_int({"N": " 3 "}, "N", 1), env_int({}, "N", 1)
    (3, 1)
    """
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not an integer") from None


def env_flag(env, name: str) -> bool:
    """Whether ``env[name]`` is set to something other than empty, ``0``, ``false`` or ``no``.

    >>> env_flag({"A": "1", "B": "no"}, "A"), env_flag({"A": "1", "B": "no"}, "B")
    (True, False)
    """
    return env.get(name, "").strip().lower() not in ("", "0", "false", "no")


def flash_attn_error() -> str | None:
    """Why ``import flash_attn`` fails here (``None``: it imports).

    verl 0.9.1's FSDP engine asks transformers for ``flash_attention_2`` unless
    ``model.override_config.attn_implementation`` says otherwise (``workers/config/model.py``),
    and its remove-padding forward calls flash-attn (``models/transformers/qwen2_vl.py``).
    """
    try:
        import flash_attn  # noqa: F401
    except Exception as e:  # ImportError, or a binary built for another torch (OSError)
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


def linear_attention_kernels_error() -> str | None:
    """Why transformers will not run Gated DeltaNet layers on fla's kernels here (``None``: it will).

    verl 0.9.1's packed path (``models/transformers/qwen3_5.py``) hands ``cu_seqlens`` to the
    layer's ``chunk_gated_delta_rule``; without fla, transformers' fallback
    (``torch_chunk_gated_delta_rule``) takes them in ``**kwargs`` and ignores them, so the
    recurrent state runs on from one packed sequence into the next. transformers picks fla
    only when ``is_flash_linear_attention_available()`` (fla >= 0.2.2 and CUDA).
    """
    try:
        import fla  # noqa: F401
    except Exception as e:  # ImportError, or a build for another torch
        return f"{type(e).__name__}: {e}".splitlines()[0]
    from transformers.utils.import_utils import is_flash_linear_attention_available

    if not is_flash_linear_attention_available():
        return "fla imports, but transformers does not use it here (it needs fla >= 0.2.2 and CUDA)"
    return None


def cuda_gpu_count() -> int:
    """Visible CUDA GPUs (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class Settings:
    """The recipe's environment variables, read once (docs/recipe_config.md)."""

    model_path: str
    model_family: str  # the answer frame the data is prepared for
    data_dir: Path
    dataset_root: Path | None
    n_gpus_per_node: int
    nnodes: int
    experiment_name: str
    logger: tuple[str, ...]
    curriculum: bool
    train_limit: int | None
    val_limit: int | None
    seed: int
    lora_rank: int = 0  # 0: full fine-tuning
    lora_alpha: int = 0
    mix: tuple[tuple[str, int], ...] = ()  # perception_mix: (task, training rows), in order
    # flash-attn imports where training runs; else sdpa attention, no remove-padding.
    flash_attn: bool = True
    filter_groups: bool = False  # FILTER_GROUPS=1: DAPO's eviction of zero-variance groups
    think: bool = False  # THINK=1: rows ask for thinking, and a template with the switch thinks
    # Packed sequences are right for the family's text model here (a linear-attention family
    # needs fla's kernels: linear_attention_kernels_error).
    packed_ok: bool = True

    @classmethod
    def from_env(cls, task: Task, env=None, gpus: int | None = None) -> Settings:
        """Read ``MODEL_PATH``, ``DATA_DIR``, ... from ``env`` (default ``os.environ``).

        ``DATA_DIR`` defaults to ``./data`` (``recipes/common.sh`` sets the checkout's ``data/``).
        ``N_GPUS_PER_NODE`` defaults to the visible GPUs, or to 8 (the paper's node) on a
        machine without any, so the CPU check composes the config a GPU node would run.
        ``flash_attn`` is whether flash-attn imports on a machine with GPUs; without GPUs
        the command is for a GPU machine set up by ``scripts/env.sh``, which installs it.
        """
        env = os.environ if env is None else env
        gpus = cuda_gpu_count() if gpus is None else gpus
        model_path = env.get("MODEL_PATH") or task.model
        lora_rank = env_int(env, "LORA_RANK", 0)
        # alpha = rank: PEFT scales the adapter by alpha / rank, so 1.0 whatever the rank.
        lora_alpha = env_int(env, "LORA_ALPHA", lora_rank)
        if lora_rank < 0 or lora_alpha < 0:
            raise SystemExit(f"LORA_RANK={lora_rank} / LORA_ALPHA={lora_alpha} must not be negative")
        think = env_flag(env, "THINK")
        suffix = (f"_lora{lora_rank}" if lora_rank else "") + ("_think" if think else "")
        root = env.get("DATASET_ROOT")
        curriculum = env_flag(env, "CURRICULUM")
        if curriculum and not task.curriculum:
            raise SystemExit(f"CURRICULUM is an option of the detection recipe, not of {task.name}")
        logger = tuple(x.strip() for x in env.get("LOGGER", "console").split(",") if x.strip())
        if task is MIX and env.get("TRAIN_LIMIT", "").strip():
            raise SystemExit("TRAIN_LIMIT is not read by perception_mix: its MIX gives each task's rows")
        train_limit = env_int(env, "TRAIN_LIMIT", task.train_limit)
        val_limit = env_int(env, "VAL_LIMIT", 500)
        try:  # read from the model, never guessed: a wrong frame trains against flat IoU
            model_family = family(env.get("MODEL_FAMILY") or family_of_model(model_path)).name
        except ValueError as e:
            raise SystemExit(
                f"{e}; set MODEL_FAMILY to the family it answers as: {', '.join(MODEL_FAMILIES)}"
            ) from None
        return cls(
            model_path=model_path,
            model_family=model_family,
            data_dir=Path(env.get("DATA_DIR") or "data").expanduser().resolve() / task.name,
            dataset_root=Path(root).expanduser().resolve() if root else None,
            n_gpus_per_node=env_int(env, "N_GPUS_PER_NODE", gpus or 8),
            nnodes=env_int(env, "NNODES", 1),
            experiment_name=env.get("EXPERIMENT_NAME") or f"{task.name}_{Path(model_path).name}{suffix}",
            logger=logger or ("console",),
            curriculum=curriculum,
            train_limit=train_limit if train_limit and train_limit > 0 else None,
            val_limit=val_limit if val_limit and val_limit > 0 else None,
            seed=env_int(env, "SEED", 1),
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            mix=tuple(parse_mix(env.get("MIX") or "", DEFAULT_MIX).items()) if task is MIX else (),
            flash_attn=not gpus or flash_attn_error() is None,
            filter_groups=env_flag(env, "FILTER_GROUPS"),
            think=think,
            packed_ok=not family(model_family).linear_attention or linear_attention_kernels_error() is None,
        )

    @property
    def uses_sample(self) -> bool:
        """No ``DATASET_ROOT`` and no prepared parquet: the offline sample stands in (for any task of a mix)."""
        if self.mix:
            return any(part.uses_sample for _, part in self.components())
        prepared = all((self.data_dir / f"{split}.parquet").exists() for split in ("train", "val"))
        return self.dataset_root is None and not prepared

    def parquet(self, split: str) -> Path:
        """``$DATA_DIR/<task>/<split>.parquet``, or under ``sample/`` for the offline sample."""
        return (self.data_dir / "sample" if self.uses_sample else self.data_dir) / f"{split}.parquet"

    def components(self) -> list[tuple[Task, Settings]]:
        """A mix's tasks, each with its settings: its rows of the mix as ``train_limit``, its data in
        ``$DATA_DIR/perception_mix/<task>/`` (apart from the single-task recipes', whose limits
        differ), its release in ``$DATASET_ROOT/<task>/``; the model family is the mix's."""
        return [
            (
                TASKS[name],
                replace(
                    self,
                    data_dir=self.data_dir / name,
                    dataset_root=self.dataset_root / name if self.dataset_root else None,
                    train_limit=rows,
                    mix=(),
                ),
            )
            for name, rows in self.mix
        ]

    def data_files(self, split: str) -> list[Path]:
        """The parquet files of ``split``: the task's one, or one per task of a mix."""
        return [part.parquet(split) for _, part in self.components()] if self.mix else [self.parquet(split)]
