"""The task's config composed as ``main_ppo`` composes it, verl's checks on it, and the launch command."""

from __future__ import annotations

import sys
from pathlib import Path

LAUNCH_MODULE = "verl.trainer.main_ppo"


def launch_command(config_dir: Path, name: str, overrides: list[str]) -> list[str]:
    """``python -m verl.trainer.main_ppo --config-path DIR --config-name NAME OVERRIDES``, this interpreter.

    >>> launch_command(Path("/r/config"), "refcoco", ["trainer.nnodes=2"])[1:]
    ['-m', 'verl.trainer.main_ppo', '--config-path', '/r/config', '--config-name', 'refcoco', 'trainer.nnodes=2']
    """
    return [sys.executable, "-m", LAUNCH_MODULE, "--config-path", str(config_dir), "--config-name", name, *overrides]


def compose(config_dir: Path, name: str, overrides: list[str]):
    """``config_dir/<name>.yaml`` (over verl's ``ppo_trainer``) with ``overrides``, as ``main_ppo
    --config-path config_dir --config-name name`` composes it.

    A misspelt key fails here (Hydra: "Could not override ..."), as it would at launch.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        return hydra_compose(config_name=name, overrides=list(overrides))


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
