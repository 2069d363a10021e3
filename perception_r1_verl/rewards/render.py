"""Write ground truth as the exact answer a perfect model of each family gives: the other
half of ``parsing``, which only reads answers. Every reward's ``render_answer`` builds on
``render_items`` / ``render_text``, and ``render_answer`` dispatches to the task's reward.
"""

from __future__ import annotations

import orjson

from ..families import family
from .registry import get_reward_cls


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def render_answer(task: str, ground_truth: dict, model_family: str, think: bool = False) -> str:
    """The exact answer a perfect model gives for ``ground_truth`` (a parsed contract dict):
    the ``render_answer`` of the task's reward class (``rewards.REWARDS``).

    Qwen2-VL answers with box tokens, Qwen2.5-VL, Qwen3-VL and Qwen3.5 with JSON; "no objects" is
    ``[]`` in every family; counting answers with points (box tokens: degenerate boxes),
    placed along the diagonal when the ground truth has a count but no points.

    >>> render_answer("grounding", {"bbox_2d": [1, 2, 3, 4]}, "qwen2_5_vl")
    '```json\\n[{"bbox_2d": [1, 2, 3, 4]}]\\n```'
    >>> render_answer("detection", {"objects": [{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]}, "qwen2_vl")
    '<|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>'
    >>> render_answer("ocr", {"text": "Hello"}, "qwen2_vl", think=True)
    '<think>\\n</think>\\n<answer>Hello</answer>'
    """
    return get_reward_cls(task).render_answer(ground_truth, model_family, think)


def render_text(body: str, think: bool = False) -> str:
    """``body`` as the whole answer: in think/answer tags when the prompt asks for thinking.

    >>> render_text("Hello"), render_text("Hello", think=True)
    ('Hello', '<think>\\n</think>\\n<answer>Hello</answer>')
    """
    return f"<think>\n</think>\n<answer>{body}</answer>" if think else body


def render_items(items: list[dict], model_family: str, think: bool = False) -> str:
    """``bbox_2d`` / ``point_2d`` items (``label`` optional) as ``model_family`` writes them:
    box tokens for Qwen2-VL, a fenced JSON list otherwise; no items is ``[]`` in both.

    >>> render_items([{"point_2d": [5, 6]}], "qwen2_5_vl")
    '```json\\n[{"point_2d": [5, 6]}]\\n```'
    >>> render_items([{"point_2d": [5, 6]}], "qwen2_vl"), render_items([], "qwen2_vl")
    ('<|box_start|>(5,6),(5,6)<|box_end|>', '```json\\n[]\\n```')
    """
    if family(model_family).answer_style == "box_tokens" and items:  # box tokens have no empty list: "[]" is the answer
        body = "".join(_render_box_token(item) for item in items)
    else:
        rows = ", ".join(_render_json_item(item) for item in items)
        body = f"```json\n[{rows}]\n```"
    return render_text(body, think)


def _render_json_item(item: dict) -> str:
    key = "bbox_2d" if "bbox_2d" in item else "point_2d"
    coords = ", ".join(_fmt(v) for v in item[key])
    label = f', "label": {orjson.dumps(item["label"]).decode()}' if item.get("label") is not None else ""
    return f'{{"{key}": [{coords}]{label}}}'


def _render_box_token(item: dict) -> str:
    if "bbox_2d" in item:
        x1, y1, x2, y2 = (_fmt(v) for v in item["bbox_2d"])
    else:  # a point as a degenerate box: Qwen2-VL has no point syntax
        x1, y1 = (_fmt(v) for v in item["point_2d"])
        x2, y2 = x1, y1
    ref = f"<|object_ref_start|>{item['label']}<|object_ref_end|>" if item.get("label") is not None else ""
    return f"{ref}<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
