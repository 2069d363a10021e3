"""LoRA recipes: the overrides compose on every task, and verl's own LoRA builder, fed the
composed config, puts adapters on the language model's linear layers and nowhere in the
vision tower (tiny random Qwen-VL models of transformers' real classes, built offline)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from recipe_fixtures import CONFIG, recipe_config

from perception_r1_verl.recipe.config import LAUNCH_MODULE, compose, launch_command, validate
from perception_r1_verl.recipe.overrides import LORA_EXCLUDE_MODULES, LORA_LR, env_overrides
from perception_r1_verl.recipe.settings import Settings
from perception_r1_verl.recipe.tasks import MIX, TASKS

LLM_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def lora_config(task, tmp_path, **env):
    settings = Settings.from_env(task, env={"DATA_DIR": str(tmp_path), "LORA_RANK": "64", **env}, gpus=0)
    config = recipe_config(task.name, settings)
    validate(config)
    return settings, config


@pytest.mark.parametrize("task", [*TASKS.values(), MIX], ids=lambda t: t.name)
def test_lora_rank_composes_on_every_recipe(task, tmp_path):
    _, config = lora_config(task, tmp_path)
    model, actor = config.actor_rollout_ref.model, config.actor_rollout_ref.actor
    assert (model.lora_rank, model.lora_alpha) == (64, 64)  # alpha follows the rank: scale 1
    assert model.target_modules == "all-linear" and model.exclude_modules == LORA_EXCLUDE_MODULES
    assert actor.optim.lr == LORA_LR
    assert config.actor_rollout_ref.rollout.load_format == "safetensors"
    assert config.trainer.experiment_name.endswith("_lora64")  # its own checkpoint folder


def test_without_lora_the_paper_settings_stay(tmp_path):
    settings = Settings.from_env(TASKS["refcoco"], env={"DATA_DIR": str(tmp_path)}, gpus=0)
    config = recipe_config("refcoco", settings)
    assert config.actor_rollout_ref.model.lora_rank == 0 and config.actor_rollout_ref.actor.optim.lr == 1e-6
    assert config.actor_rollout_ref.rollout.load_format == "dummy"  # verl's default


def test_lora_plain_hydra_overrides_win_over_the_environment(tmp_path):
    settings = Settings.from_env(TASKS["coco_det"], env={"DATA_DIR": str(tmp_path), "LORA_RANK": "16"}, gpus=0)
    extra = ["actor_rollout_ref.model.lora_alpha=32", "actor_rollout_ref.actor.optim.lr=3e-5"]
    config = recipe_config("coco_det", settings, *extra)
    validate(config)
    assert config.actor_rollout_ref.model.lora_alpha == 32 and config.actor_rollout_ref.actor.optim.lr == 3e-5


@pytest.mark.parametrize(("env", "error", "message"), [
    ({"LORA_RANK": "-8"}, SystemExit, "must not be negative"),
    ({"LORA_RANK": "1024"}, ValueError, "less than or equal to 512"),
])  # fmt: skip
def test_bad_lora_ranks_stop_before_launch(tmp_path, env, error, message):
    with pytest.raises(error, match=message):
        lora_config(TASKS["refcoco"], tmp_path, **env)


def _tiny_qwen_vl(family: str):
    import transformers

    text = {"vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]}}  # fmt: skip
    if family == "qwen2_vl":
        vision = {"depth": 2, "embed_dim": 32, "hidden_size": 32, "num_heads": 4, "mlp_ratio": 2}
        cfg, cls = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
    else:
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "out_hidden_size": 32,
                  "fullatt_block_indexes": [1]}  # fmt: skip
        cfg, cls = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(0)
    return cls(cfg(text_config=text, vision_config=vision))


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_verls_lora_builder_adapts_the_language_model_only(family, tmp_path):
    from omegaconf import OmegaConf
    from verl.workers.config import HFModelConfig
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    _, config = lora_config(TASKS["refcoco"], tmp_path, MODEL_FAMILY=family)
    # _build_lora_module reads only the engine's HFModelConfig: the composed model section
    # over the dataclass's defaults (building the dataclass itself would load MODEL_PATH).
    defaults = {f.name: f.default for f in dataclasses.fields(HFModelConfig) if f.default is not dataclasses.MISSING}
    section = OmegaConf.to_container(config.actor_rollout_ref.model, resolve=True)
    engine = SimpleNamespace(model_config=SimpleNamespace(**{**defaults, **section}))
    model = FSDPEngine._build_lora_module(engine, _tiny_qwen_vl(family))

    adapted = {
        name.removesuffix(".lora_A.default") for name, _ in model.named_modules() if name.endswith("lora_A.default")
    }
    assert adapted, "no adapter was added"
    assert not [name for name in adapted if "visual" in name]
    assert {name.rsplit(".", 1)[-1] for name in adapted} == LLM_LINEARS  # every LLM linear layer, no lm_head
    assert len(adapted) == 2 * len(LLM_LINEARS)  # both decoder layers
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)  # the base, tower included, is frozen
    assert model.peft_config["default"].r == 64


def test_the_printed_lora_command_composes_to_the_same_config(tmp_path):
    """The launch line is shell-quoted (the regex has ``*``): split back, it composes the same."""
    import shlex

    settings = Settings.from_env(TASKS["page_ocr"], env={"DATA_DIR": str(tmp_path), "LORA_RANK": "32"}, gpus=0)
    line = shlex.join(launch_command(CONFIG, "page_ocr", env_overrides(TASKS["page_ocr"], settings)))
    argv = shlex.split(line)
    start = argv.index(LAUNCH_MODULE) + 1
    assert argv[start : start + 4] == ["--config-path", str(CONFIG), "--config-name", "page_ocr"]
    config = compose(CONFIG, "page_ocr", argv[start + 4 :])
    assert config.actor_rollout_ref.model.exclude_modules == ".*visual.*"
    assert config.actor_rollout_ref.model.lora_rank == 32
