"""Prompts per task and model family, following Perception-R1.

The paper trains without thinking (its Table 5: explicit reasoning hurts perception), so
prompts ask for the answer only; ``think=True`` appends the R1-style instruction to reason
in ``<think>`` and answer in ``<answer>``. The texts are the paper's; families that answer
in JSON (Qwen2.5-VL, Qwen3-VL, Qwen3.5) are asked for JSON, which is how they were instruction-tuned
to emit boxes, while Qwen2-VL answers with its box tokens unprompted. Every prompt starts
with the ``<image>`` placeholder that verl's ``RLHFDataset`` replaces with the image.
"""

from __future__ import annotations

from typing import NamedTuple

from perception_r1_verl.families import family
from perception_r1_verl.registry import Registry

IMAGE_TOKEN = "<image>"
THINK_INSTRUCTION = " Output the thinking process in <think> </think> and the final answer in <answer> </answer> tags."
_JSON_SUFFIX = " Output in JSON format."


class PromptFields(NamedTuple):
    """What a row's prompt may name; each task's builder uses the fields it needs."""

    expression: str | None = None
    label: str | None = None
    categories: list[str] | None = None


# Task name -> builder(fields, json_family) -> the instruction (without <image> and thinking).
PROMPTS = Registry("prompt")
register_prompt = PROMPTS.register


def prompt_text(
    task: str,
    model_family: str,
    *,
    expression: str | None = None,
    label: str | None = None,
    categories: list[str] | None = None,
    think: bool = False,
) -> str:
    """The user turn for one sample (``<image>`` followed by the task's instruction).

    >>> prompt_text("grounding", "qwen2_vl", expression="man in red")
    '<image>Output the bounding box of the man in red in the image.'
    >>> prompt_text("counting", "qwen2_5_vl", label="coins")
    '<image>Output all the bounding boxes of the coins. Output in JSON format.'
    >>> prompt_text("detection", "qwen2_5_vl", categories=["person", "dog"])
    '<image>Please output bbox coordinates and names of person, dog.'
    >>> prompt_text("ocr", "qwen3_vl", think=True)[:30]
    '<image>OCR this image. Output '
    """
    json_family = family(model_family).answer_style == "json"
    text = PROMPTS.lookup(task)(PromptFields(expression, label, categories), json_family)
    return IMAGE_TOKEN + text + (THINK_INSTRUCTION if think else "")


@register_prompt("grounding")
def _grounding(fields: PromptFields, json_family: bool) -> str:
    text = f"Output the bounding box of the {_required(fields.expression, 'expression')} in the image."
    return text + (_JSON_SUFFIX if json_family else "")


@register_prompt("counting")
def _counting(fields: PromptFields, json_family: bool) -> str:
    # The paper's text has no final period; it reads better with one and the model does not care.
    text = f"Output all the bounding boxes of the {_required(fields.label, 'label')}."
    return text + (_JSON_SUFFIX if json_family else "")


@register_prompt("detection")
def _detection(fields: PromptFields, json_family: bool) -> str:
    # Qwen2.5-VL emits JSON for this sentence by itself (it is its grounding prompt).
    return f"Please output bbox coordinates and names of {', '.join(_required(fields.categories, 'categories'))}."


@register_prompt("ocr")
def _ocr(fields: PromptFields, json_family: bool) -> str:
    return "OCR this image."


def chat(text: str) -> list[dict]:
    """verl's ``prompt`` column: a single user turn (the chat template adds the system turn)."""
    return [{"role": "user", "content": text}]


def _required(value, name: str):
    if not value:
        raise ValueError(f"this prompt needs a non-empty {name}")
    return value
