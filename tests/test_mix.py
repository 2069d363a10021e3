"""All four tasks in one run: ``bash recipes/perception_mix.sh`` on the offline sample, the
mixed training set as verl's RLHFDataset loads it, one val file per task."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
from recipe_fixtures import CONFIG, MAX_RESPONSE, RECIPES, launch_overrides, recipe_config

from perception_r1_verl.data.mix import parse_mix
from perception_r1_verl.recipe.config import compose, validate
from perception_r1_verl.recipe.data import prep_command, prepare_data
from perception_r1_verl.recipe.settings import Settings, cuda_gpu_count
from perception_r1_verl.recipe.tasks import DEFAULT_MIX, MIX

# Rows per task, small enough for the sample (32 train images per task).
SMALL_MIX = {"refcoco": 6, "pixmo_count": 4, "page_ocr": 3, "coco_det": 8}
DATA_SOURCES = {"refcoco": "refcoco", "pixmo_count": "pixmo_count", "page_ocr": "page_ocr", "coco_det": "coco"}


def mix_env(data_dir, model_dir, **extra) -> dict[str, str]:
    return {
        "DATA_DIR": str(data_dir),
        "MODEL_PATH": str(model_dir),
        "MIX": ",".join(f"{name}:{rows}" for name, rows in SMALL_MIX.items()),
        "VAL_LIMIT": "3",
        **extra,
    }


@pytest.fixture(scope="module")
def mix_run(tmp_path_factory, qwen2_5_vl_processor_dir):
    """``bash recipes/perception_mix.sh trainer.test_freq=10`` from an empty directory, once."""
    cwd = tmp_path_factory.mktemp("mix")
    env = {**os.environ, **mix_env(cwd / "data", qwen2_5_vl_processor_dir), "PYTHON": sys.executable, "CHECK_ROWS": "1"}
    if cuda_gpu_count():  # never start a training from the test suite
        env["DRY_RUN"] = "1"
    out = subprocess.run(
        ["bash", str(RECIPES / "perception_mix.sh"), "trainer.test_freq=10"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    settings = Settings.from_env(MIX, env=mix_env(cwd / "data", qwen2_5_vl_processor_dir), gpus=0)
    return out.stdout, settings


def test_the_mix_recipe_prepares_checks_and_prints_the_launch(mix_run):
    stdout, settings = mix_run
    assert "[validate_config] All configuration checks passed" in stdout
    for name, rows in SMALL_MIX.items():
        assert f"{name}: {rows} rows" in stdout  # the counted mix
    # One reference answer per task scored at its maximum (the check passed: exit 0).
    for score in ("2.000", "3.000"):
        assert f"row 0 reference score={score}" in stdout
    overrides = launch_overrides(stdout, MIX.name)
    assert overrides[-1] == "trainer.test_freq=10"
    config = compose(CONFIG, MIX.name, overrides)
    validate(config)  # the printed command is the checked one
    assert list(config.data.train_files) == [str(p) for p in settings.data_files("train")]
    assert len(config.data.val_files) == 4 and config.trainer.test_freq == 10
    assert config.data.max_response_length == max(MAX_RESPONSE.values())  # the longest task's
    assert config.data.image_patch_size == 14  # Qwen2.5-VL, chosen once for all tasks


def test_the_mixed_training_set_loads_through_verls_rlhf_dataset(mix_run, qwen2_5_vl_processor):
    from verl.trainer.ppo.utils import create_rl_dataset

    _, settings = mix_run
    config = recipe_config(MIX.name, settings)
    tokenizer = qwen2_5_vl_processor.tokenizer
    train = create_rl_dataset(config.data.train_files, config.data, tokenizer, qwen2_5_vl_processor, True)
    sources = Counter(train.dataframe["data_source"])
    assert sources == {DATA_SOURCES[name]: rows for name, rows in SMALL_MIX.items()}
    families = {info["model_family"] for info in train.dataframe["extra_info"]}
    assert families == {"qwen2_5_vl"}  # every task prepared for the one family
    tasks = {info["task"] for info in train.dataframe["extra_info"]}
    assert tasks == {"grounding", "counting", "ocr", "detection"}
    # Each row keeps its task's prompt, with its image where the prompt puts it.
    seen = {}
    for i in range(len(train)):
        item = train[i]
        (message,) = item["raw_prompt"]
        image, text = message["content"]
        assert image["type"] == "image" and image["image"].mode == "RGB"
        seen.setdefault(item["extra_info"]["task"], text["text"])
    assert seen["detection"].startswith("Please output bbox coordinates and names of ")
    assert seen["grounding"].startswith("Output the bounding box of the ")
    assert seen["counting"].startswith("Output all the bounding boxes of the ")
    assert seen["ocr"] == "OCR this image."
    val = create_rl_dataset(config.data.val_files, config.data, tokenizer, qwen2_5_vl_processor, False)
    assert set(val.dataframe["data_source"]) == set(DATA_SOURCES.values())


def test_a_mix_prepared_for_more_rows_is_refused(mix_run):
    _, settings = mix_run
    smaller = {**SMALL_MIX, "refcoco": 2}
    env = mix_env(settings.data_dir.parent, MIX.model, MIX=",".join(f"{k}:{v}" for k, v in smaller.items()))
    with pytest.raises(SystemExit, match="refcoco: 6 rows prepared, MIX asks 2"):
        prepare_data(MIX, Settings.from_env(MIX, env=env, gpus=0))


def test_the_default_mix_is_the_papers_subsets_with_10k_coco():
    assert parse_mix("", DEFAULT_MIX) == {"refcoco": 5000, "pixmo_count": 10000, "page_ocr": 5000, "coco_det": 10000}
    settings = Settings.from_env(MIX, env={}, gpus=0)
    assert settings.model_family == "qwen2_5_vl" and dict(settings.mix) == DEFAULT_MIX
    parts = {task.name: part for task, part in settings.components()}
    assert {name: part.train_limit for name, part in parts.items()} == DEFAULT_MIX
    assert all(
        part.model_family == "qwen2_5_vl" and part.data_dir.parent == settings.data_dir for part in parts.values()
    )


@pytest.mark.parametrize(("env", "message"), [
    ({"MIX": "refcoco:10,flowers:5"}, "unknown task 'flowers'"),
    ({"MIX": "refcoco:10,refcoco:5"}, "refcoco appears twice"),
    ({"MIX": "refcoco:many"}, "needs a positive number of rows"),
    ({"TRAIN_LIMIT": "100"}, "MIX gives each task's rows"),
    ({"CURRICULUM": "1"}, "option of the detection recipe"),
])  # fmt: skip
def test_bad_mix_settings_stop_with_a_message(env, message):
    with pytest.raises(SystemExit, match=message):
        Settings.from_env(MIX, env=env, gpus=0)


def test_a_dataset_root_holds_one_release_per_task(tmp_path):
    settings = Settings.from_env(
        MIX, env={"DATA_DIR": str(tmp_path / "d"), "DATASET_ROOT": str(tmp_path / "r")}, gpus=0
    )
    task, part = settings.components()[-1]
    command = prep_command(task, part, "train")
    flags = dict(zip(command[2::2], command[3::2], strict=False))
    assert flags["--annotations"] == str(tmp_path / "r" / "coco_det" / "annotations" / "instances_train2017.json")
    assert flags["--out"] == str(tmp_path / "d" / "perception_mix" / "coco_det" / "train.parquet")
    assert (flags["--limit"], flags["--model-family"]) == ("10000", "qwen2_5_vl")
