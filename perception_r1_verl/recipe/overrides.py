"""The overrides the environment adds to ``recipes/config/<task>.yaml``: what depends on the machine.

The paper's settings are in the config files; these are the data files, the model, the GPUs,
the run's names, and the options LoRA (``LORA_RANK``), curriculum (``CURRICULUM``), group
filtering (``FILTER_GROUPS``), thinking (``THINK``, the chat template's switch), the attention
fallback without flash-attn, and padded rows for a linear-attention model without fla.
"""

from __future__ import annotations

from pathlib import Path

from perception_r1_verl.families import chat_template_kwargs, family
from perception_r1_verl.recipe.settings import Settings
from perception_r1_verl.recipe.tasks import Task

# LoRA (``LORA_RANK=N``) through verl's FSDP LoRA (PEFT on the actor, vLLM serving the
# adapter). Adapters learn slowly at full fine-tuning rates: verl's LoRA guide
# (docs/advance/ppo_lora.rst) advises an order of magnitude more than the full-model lr
# (the paper's 1e-6, recipes/config/base.yaml).
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

# Without flash-attn: no remove-padding (packed sequences need its varlen kernels), and
# PyTorch's own attention kernel for the FSDP actor and reference (verl's model config
# defaults to flash_attention_2).
NO_REMOVE_PADDING = "actor_rollout_ref.model.use_remove_padding=False"
NO_FLASH_ATTN_OVERRIDES = [
    NO_REMOVE_PADDING,
    "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
]


# Group filtering (``FILTER_GROUPS=1``): DAPO's dynamic sampling as verl 0.9.1's v1
# ReplayBuffer does it (trainer/ppo/v1/replay_buffer.py). A group whose rollouts all score
# the same has zero GRPO advantage; it is evicted and fresh prompts are generated until the
# step has train_batch_size groups that differ. The metric "reward" is the canonical score
# (the sum of rm_scores: the perception reward's ``score``). One train batch of prompts in
# flight at a time bounds the extra generation per wait; max_num_gen_batches is ignored by
# the v1 buffer (it warns), so nothing caps the number of refills: a run whose every group
# is flat keeps generating (watch training/filter_groups/evicted_samples).
FILTER_GROUPS_OVERRIDES = [
    "algorithm.filter_groups.enable=True",
    "algorithm.filter_groups.metric=reward",
    "algorithm.filter_groups.max_inflight_gen_batches=1",
]


def env_overrides(task: Task, settings: Settings) -> list[str]:
    """The overrides of a run, after its config file and before the user's own."""
    overrides = [
        f"data.train_files={files_override(settings.data_files('train'))}",
        f"data.val_files={files_override(settings.data_files('val'))}",
        # qwen_vl_utils resizes with factor 2 x patch: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL.
        f"data.image_patch_size={family(settings.model_family).resize_factor // 2}",
        f"data.seed={settings.seed}",
        f"actor_rollout_ref.model.path={settings.model_path}",
        f"trainer.n_gpus_per_node={settings.n_gpus_per_node}",
        f"trainer.nnodes={settings.nnodes}",
        f"trainer.experiment_name={settings.experiment_name}",
        f"trainer.logger=[{','.join(settings.logger)}]",
    ]
    if settings.lora_rank:
        overrides += lora_overrides(settings.lora_rank, settings.lora_alpha)
    # Told explicitly (Qwen3.5 from 4B up thinks unless told not to): the prompt verl builds,
    # the rollout's and validation's, then has the think block the rows ask for.
    overrides += [
        f"+data.apply_chat_template_kwargs.{key}={value}"
        for key, value in chat_template_kwargs(settings.model_family, settings.think).items()
    ]
    if not settings.flash_attn:
        overrides += NO_FLASH_ATTN_OVERRIDES
    elif not settings.packed_ok:  # a linear-attention text model without fla: padded rows only
        overrides.append(NO_REMOVE_PADDING)
    if settings.curriculum:
        overrides += curriculum_overrides(settings.seed)
    if settings.filter_groups:
        overrides += FILTER_GROUPS_OVERRIDES
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
        f"actor_rollout_ref.actor.optim.lr={LORA_LR}",
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
    """Overrides that plug ``perception_r1_verl.plugin.curriculum`` into verl's data loading.

    verl 0.9.1 has no custom-sampler hook for the training dataloader
    (``create_rl_sampler`` is random or sequential), so the dataset orders itself and
    ``data.shuffle=False`` keeps that order; it asks for more rollouts on hard rows through
    the per-row ``__rollout_n__`` that verl's agent loop honours.
    """
    return [
        "data.custom_cls.path=pkg://perception_r1_verl.plugin.curriculum",
        "data.custom_cls.name=CurriculumDataset",
        "data.shuffle=False",
        f"+data.curriculum.max_objects=[{','.join(map(str, CURRICULUM_MAX_OBJECTS))}]",
        f"+data.curriculum.rollout_n=[{','.join(map(str, CURRICULUM_ROLLOUT_N))}]",
        f"+data.curriculum.seed={seed}",
    ]
