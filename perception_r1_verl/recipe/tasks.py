"""The recipes' tasks: what the preflight needs of each beside its config file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """What differs between the recipes outside their ``recipes/config/<name>.yaml``."""

    name: str  # recipe, config file and perception-r1-prep source name
    reward_task: str  # extra_info["task"] of its rows
    model: str  # the paper's base model (MODEL_PATH's default; its family from its name)
    train_limit: int | None  # the paper's training subset (Table 7); None: all rows
    curriculum: bool = False  # takes CURRICULUM=1 (rows ordered by object count)


TASKS = {
    task.name: task
    for task in (
        # Qwen2.5-VL-3B for detection (the paper: "specialized optimization for localizing boxes").
        Task("coco_det", "detection", "Qwen/Qwen2.5-VL-3B-Instruct", None, curriculum=True),
        Task("refcoco", "grounding", "Qwen/Qwen2-VL-2B-Instruct", 5000),
        Task("pixmo_count", "counting", "Qwen/Qwen2-VL-2B-Instruct", 10000),
        Task("page_ocr", "ocr", "Qwen/Qwen2-VL-2B-Instruct", 5000),
    )
}

# All four tasks in one run (``recipes/perception_mix.sh``): one policy, each task with its
# own prompt and answer frame, the data of every task prepared for the one model family.
# Qwen2.5-VL-3B is the paper's detection model, the hardest of the four tasks, and answers
# the other three in its own frame.
MIX = Task("perception_mix", "mixed", "Qwen/Qwen2.5-VL-3B-Instruct", None)
# Rows drawn from each task's training set (``MIX``): the paper's subsets (Table 7) for
# RefCOCO, PixMo-Count and page OCR. The paper trains detection on all of COCO (118k
# images), which would be 85% of the mix; 10k is the subset of its reward ablation
# (Table 6), on which the detection rewards reached 28 AP.
DEFAULT_MIX = {"refcoco": 5000, "pixmo_count": 10000, "page_ocr": 5000, "coco_det": 10000}


def task_named(name: str) -> Task:
    """The task a recipe name stands for."""
    return MIX if name == MIX.name else TASKS[name]
