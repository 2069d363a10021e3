"""What the recipe tests share: the recipes' folders, the composed launch config, the printed launch command."""

from __future__ import annotations

import shlex
from pathlib import Path

from perception_r1_verl.recipe.config import LAUNCH_MODULE, compose
from perception_r1_verl.recipe.overrides import env_overrides
from perception_r1_verl.recipe.settings import Settings
from perception_r1_verl.recipe.tasks import task_named

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
CONFIG = RECIPES / "config"
# The paper's response caps (recipes/config/<task>.yaml).
MAX_RESPONSE = {"coco_det": 2048, "refcoco": 768, "pixmo_count": 768, "page_ocr": 2048, "perception_mix": 2048}


def recipe_config(task: str, settings: Settings, *extra: str):
    """``recipes/config/<task>.yaml`` with the environment's overrides and ``extra``, as launched."""
    return compose(CONFIG, task, env_overrides(task_named(task), settings) + list(extra))


def launch_overrides(stdout: str, task: str) -> list[str]:
    """The overrides of the ``main_ppo`` command printed on the line after "[recipe] launch command:"
    (as tests/e2e/launch.py reads it), after its config folder and name."""
    lines = stdout.splitlines()
    argv = shlex.split(lines[lines.index("[recipe] launch command:") + 1])
    start = argv.index(LAUNCH_MODULE) + 1
    assert argv[start : start + 4] == ["--config-path", str(CONFIG), "--config-name", task]
    return argv[start + 4 :]
