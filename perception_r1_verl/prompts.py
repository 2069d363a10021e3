"""Prompts per task and model family, following Perception-R1.

The paper trains without thinking (its Table 5: explicit reasoning hurts perception), so
prompts ask for the answer only; ``think=True`` appends the R1-style instruction to reason
in ``<think>`` and answer in ``<answer>``. The texts are the paper's; families that answer
in JSON (Qwen2.5-VL, Qwen3-VL) are asked for JSON, which is how they were instruction-tuned
to emit boxes, while Qwen2-VL answers with its box tokens unprompted. Every prompt starts
with the ``<image>`` placeholder that verl's ``RLHFDataset`` replaces with the image.
"""

from __future__ import annotations

from perception_r1_verl.frames import check_family

TASKS = ("grounding", "counting", "ocr", "detection")
IMAGE_TOKEN = "<image>"
THINK_INSTRUCTION = " Output the thinking process in <think> </think> and the final answer in <answer> </answer> tags."
_JSON_SUFFIX = " Output in JSON format."


def prompt_text(
    task: str,
    model_family: str,
    *,
    expression: str | None = None,
    label: str | None = None,
    categories: list[str] | None = None,
    think: bool = False,
) -> str:
    """The user turn for one sample (``<image>`` followed by the instruction).

    >>> prompt_text("grounding", "qwen2_vl", expression="man in red")
    '<image>Output the bounding box of the man in red in the image.'
    >>> prompt_text("counting", "qwen2_5_vl", label="coins")
    '<image>Output all the bounding boxes of the coins. Output in JSON format.'
    >>> prompt_text("detection", "qwen2_5_vl", categories=["person", "dog"])
    '<image>Please output bbox coordinates and names of person, dog.'
    >>> prompt_text("ocr", "qwen3_vl", think=True)[:30]
    '<image>OCR this image. Output '
    """
    json_family = check_family(model_family) != "qwen2_vl"
    if task == "grounding":
        text = f"Output the bounding box of the {_required(expression, 'expression')} in the image."
        text += _JSON_SUFFIX if json_family else ""
    elif task == "counting":
        # The paper's text has no final period; it reads better with one and the model
        # does not care.
        text = f"Output all the bounding boxes of the {_required(label, 'label')}."
        text += _JSON_SUFFIX if json_family else ""
    elif task == "detection":
        # Qwen2.5-VL emits JSON for this sentence by itself (it is its grounding prompt).
        names = ", ".join(_required(categories, "categories"))
        text = f"Please output bbox coordinates and names of {names}."
    elif task == "ocr":
        text = "OCR this image."
    else:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    return IMAGE_TOKEN + text + (THINK_INSTRUCTION if think else "")


def chat(text: str) -> list[dict]:
    """verl's ``prompt`` column: a single user turn (the chat template adds the system turn)."""
    return [{"role": "user", "content": text}]


def _required(value, name: str):
    if not value:
        raise ValueError(f"this prompt needs a non-empty {name}")
    return value
