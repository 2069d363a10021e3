"""Prompts: the paper's texts, JSON for JSON-answering families, the think option."""

from __future__ import annotations

import pytest

from perception_r1_verl.prompts import THINK_INSTRUCTION, chat, prompt_text

ARGS = {
    "grounding": {"expression": "dog"},
    "counting": {"label": "apples"},
    "detection": {"categories": ["a", "b"]},
    "ocr": {},
}
PAPER = {
    "grounding": "Output the bounding box of the dog in the image.",
    "counting": "Output all the bounding boxes of the apples.",
    "detection": "Please output bbox coordinates and names of a, b.",
    "ocr": "OCR this image.",
}


@pytest.mark.parametrize("task", list(ARGS))
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_prompts(task, family):
    text = prompt_text(task, family, **ARGS[task])
    assert text.startswith("<image>" + PAPER[task])
    asks_json = task in ("grounding", "counting") and family != "qwen2_vl"
    assert text.endswith(" Output in JSON format.") == asks_json
    assert "<think>" not in text
    thinking = prompt_text(task, family, think=True, **ARGS[task])
    assert thinking == text + THINK_INSTRUCTION and "<answer>" in thinking


def test_missing_arguments_and_unknowns():
    with pytest.raises(ValueError, match="expression"):
        prompt_text("grounding", "qwen2_vl")
    with pytest.raises(ValueError, match="categories"):
        prompt_text("detection", "qwen2_vl", categories=[])
    with pytest.raises(ValueError, match="unknown task"):
        prompt_text("caption", "qwen2_vl")
    with pytest.raises(ValueError, match="unknown model family"):
        prompt_text("ocr", "llava")
    assert chat("x") == [{"role": "user", "content": "x"}]
