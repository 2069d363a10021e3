"""The model families: one record each that every layer reads, and the family read from the
model (its config.json, or a hub name's spelling), never guessed."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from perception_r1_verl import families, frames, prompts, rewards
from perception_r1_verl.data.options import ConvertOptions
from perception_r1_verl.families import Family, family_of_model
from perception_r1_verl.recipe.settings import Settings
from perception_r1_verl.recipe.tasks import TASKS

CONFIG_DIR = Path(__file__).parents[1] / "recipes" / "config"


def model_folder(tmp_path, name: str, model_type: str | None):
    folder = tmp_path / name
    folder.mkdir(parents=True)
    if model_type is not None:
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [("qwen2_vl", "qwen2_vl"), ("qwen2_5_vl", "qwen2_5_vl"), ("qwen3_vl", "qwen3_vl"), ("qwen3_vl_moe", "qwen3_vl"),
     ("qwen3_5", "qwen3_5"), ("qwen3_5_moe", "qwen3_5")],
)  # fmt: skip
def test_a_local_model_is_read_by_its_config_not_its_folder_name(tmp_path, model_type, expected):
    # A checkpoint folder named after another family: the config decides.
    assert family_of_model(model_folder(tmp_path, "Qwen2-VL-like/step_100", model_type)) == expected


@pytest.mark.parametrize(
    ("model_type", "reason"), [(None, "cannot read the model_type"), ("llava", "'llava' is no known model family")]
)
def test_a_local_model_without_a_known_model_type_is_an_error(tmp_path, model_type, reason):
    with pytest.raises(ValueError, match=reason):
        family_of_model(model_folder(tmp_path, "step_100", model_type))


# Qwen3.5's hub names (huggingface.co/Qwen: no "-Instruct"; "-Base" for base models; MoE as
# total-active), and Qwen3-VL's beside them: each spells its own family.
@pytest.mark.parametrize(
    ("name", "expected"),
    [("Qwen/Qwen3.5-0.8B", "qwen3_5"), ("Qwen/Qwen3.5-2B", "qwen3_5"), ("Qwen/Qwen3.5-4B-Base", "qwen3_5"),
     ("Qwen/Qwen3.5-9B", "qwen3_5"), ("Qwen/Qwen3.5-35B-A3B", "qwen3_5"), ("org/qwen3_5-2b-sft", "qwen3_5"),
     ("Qwen/Qwen3-VL-4B-Instruct", "qwen3_vl"), ("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl")],
)  # fmt: skip
def test_hub_names_spell_their_family(name, expected):
    assert family_of_model(name) == expected


@pytest.mark.parametrize("name", ["/ckpt/step_100", "Qwen/Qwen3-8B", "llava-hf/llava-1.5-7b-hf"])
def test_a_hub_name_of_no_known_family_is_an_error(name):
    with pytest.raises(ValueError, match="spells no known model family"):
        family_of_model(name)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_recipe_stops_and_asks_for_model_family_instead_of_the_tasks_default(tmp_path, task):
    env = {"DATA_DIR": str(tmp_path), "MODEL_PATH": str(model_folder(tmp_path, "step_100", None))}
    with pytest.raises(SystemExit, match="set MODEL_FAMILY"):
        Settings.from_env(TASKS[task], env=env, gpus=0)
    assert Settings.from_env(TASKS[task], env={**env, "MODEL_FAMILY": "qwen3_vl"}, gpus=0).model_family == "qwen3_vl"
    checkpoint = model_folder(tmp_path, "ckpt/step_100", "qwen2_5_vl")
    assert (
        Settings.from_env(TASKS[task], env={**env, "MODEL_PATH": str(checkpoint)}, gpus=0).model_family == "qwen2_5_vl"
    )


def test_the_recipe_preflight_and_prep_stop_with_the_reason(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), "MODEL_PATH": "Qwen/Qwen3-8B", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "perception_r1_verl.recipe", "refcoco", "--config-dir", str(CONFIG_DIR)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "set MODEL_FAMILY" in run.stderr, run.stderr
    prep = [sys.executable, "-m", "perception_r1_verl.data.cli", "page_ocr", "--jsonl", str(tmp_path / "x.jsonl")]
    run = subprocess.run(
        [*prep, "--out", str(tmp_path / "o.parquet"), "--model", "/ckpt/step_100"], capture_output=True, text=True
    )
    assert run.returncode == 2 and "pass --model-family" in run.stderr, run.stderr


def test_a_new_family_is_one_record_that_every_layer_reads(monkeypatch):
    """A family added to FAMILIES alone: prompts, frames, converter options, rendering and the
    format reward all follow its record."""
    toy = Family("toy_vl", 32, 4096, "pixels", "box_tokens", ("toy_vl",), ("toy-vl",))
    monkeypatch.setitem(families.FAMILIES, toy.name, toy)
    assert family_of_model("org/Toy-VL-1B") == "toy_vl"
    assert frames.input_size("toy_vl", (640, 480)) == (640, 480)
    assert frames.answer_frame("toy_vl", (640, 480)) == (640, 480)
    assert ConvertOptions(model_family="toy_vl").min_pixels == 4096
    assert prompts.prompt_text("counting", "toy_vl", label="coins") == prompts.prompt_text(
        "counting", "qwen2_vl", label="coins"
    )
    gt = {"bbox_2d": [10, 20, 30, 40], "frame": [640, 480]}
    answer = rewards.render_answer("grounding", gt, "toy_vl")
    assert answer.startswith("<|box_start|>")
    info = {"task": "grounding", "model_family": "toy_vl"}
    assert rewards.compute_score("refcoco", answer, json.dumps(gt), info)["format"] == 1.0
    json_answer = rewards.render_answer("grounding", gt, "qwen2_5_vl")
    assert rewards.compute_score("refcoco", json_answer, json.dumps(gt), info)["format"] == 0.0
    monkeypatch.setitem(families.FAMILIES, toy.name, replace(toy, answer_style="json", answer_frame="relative"))
    assert frames.answer_frame("toy_vl", (640, 480)) == (1000, 1000)
    assert rewards.render_answer("grounding", gt, "toy_vl") == json_answer
