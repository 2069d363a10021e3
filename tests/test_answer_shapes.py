"""Answer shapes the rewards used to misread (issue 15, point 4): a markdown page holding
its own code blocks, and a count written as a bare number."""

from __future__ import annotations

import json

import pytest

from perception_r1_verl.eval.counting import sample_counting
from perception_r1_verl.parsing import answer_text, parse_answer
from perception_r1_verl.rewards import compute_score

# --- counting: a bare number, in <answer> tags (the R1-V / EasyR1 CLEVR style) -------------

# Verbatim rollouts of Qwen2.5-VL on CLEVR counting, posted by BUAADreamer (2025-02-26) in
# https://github.com/hiyouga/EasyR1/pull/38 ("I notice some Chinese thinking during rollout").
EASYR1_PR38 = (
    "<think> \n为了解决这个问题，我需要识别并排列出给定图像中的物体。我将使用以下步骤：\n1. 检查图像中的所有对象。\n"
    "2. 确定每个物体的确切位置。\n3. 标记每个物体。 \n4. 组织物体并计算总数。\n</think>\n\n<answer>5</answer>"
)
# Verbatim model_output of Qwen2-VL-2B-Instruct on SuperCLEVR (ground truth 9), posted by
# llltttwww (2025-02-15) in https://github.com/StarsfieldAI/R1-V/issues/100 (Deep-Agent/R1-V).
R1V_ISSUE100 = "<think>\nA. 10\n</think>\n<answer>\n10\n</answer>"

POINTS = [[10, 10], [20, 20], [30, 30], [40, 40], [50, 50]]


@pytest.mark.parametrize(("completion", "count"), [(EASYR1_PR38, 5), (R1V_ISSUE100, 10)])
def test_a_bare_count_in_answer_tags_is_the_count_in_evaluation(completion, count):
    answer = parse_answer(completion, think=True)
    assert sample_counting(answer, {"count": count})["correct"]
    assert sample_counting(answer, {"count": 9})["pred_count"] == count


def test_a_bare_count_is_paid_for_the_count_not_for_localisation_or_format():
    extra = {"task": "counting", "think": True}
    with_points = json.dumps({"count": 5, "points": POINTS, "frame": [100, 100]})
    score = compute_score("clevr_count", EASYR1_PR38, with_points, extra)
    assert score == {"score": 0.5, "count": 5.0, "exact": 1.0, "ratio": 1.0, "location": 0.0, "format": 0.0}
    # Without ground-truth points only the count is scored: the ratio alone.
    assert compute_score("clevr_count", EASYR1_PR38, json.dumps({"count": 5}), extra)["score"] == 1.0
    wrong = compute_score("clevr_count", R1V_ISSUE100, json.dumps({"count": 9}), extra)
    assert wrong["exact"] == 0.0 and wrong["score"] == pytest.approx(0.9)  # min/max of 9 and 10
    # The asked answer, one point per object, still pays the most.
    points = "<think>five</think><answer>" + json.dumps([{"point_2d": p} for p in POINTS]) + "</answer>"
    assert compute_score("clevr_count", points, with_points, extra)["score"] == 2.0


@pytest.mark.parametrize("completion", ["5", "5 objects", "-5", "٥", "1234567", "<answer>5, 6</answer>"])
def test_only_one_plain_integer_alone_is_a_bare_count(completion):
    reading = sample_counting(parse_answer(completion), {"count": 5})
    assert reading["correct"] is (completion == "5")


# --- OCR: a markdown page with its own code blocks -------------------------------------------

# Constructed, not a model's output: no verbatim public completion of this shape was found
# in the searchable index (QwenLM/Qwen3-VL issue #1611, which reports Qwen3-VL writing pages
# this way, is not in it). The shape: a ```markdown page whose text holds a ```bash block.
PAGE = "# Install\n\nRun:\n\n```bash\npip install perception-r1-verl\n```\n\nThen train."
NESTED = "```markdown\n" + PAGE + "\n```"


def test_a_markdown_page_with_its_own_code_block_is_read_whole():
    assert answer_text(NESTED) == (PAGE, True, False)
    score = compute_score("page_ocr", NESTED, json.dumps({"text": PAGE}), {"task": "ocr"})
    assert score["edit_similarity"] == 1.0 and score["format"] == 1.0


def test_a_markdown_page_whose_outer_fence_never_closes_is_truncated():
    runaway = "```markdown\n" + PAGE + "\n```python\nwhile True:\n    pass\n```\n"
    text, _, truncated = answer_text(runaway)
    assert truncated and text.startswith(PAGE)
    assert compute_score("page_ocr", runaway, json.dumps({"text": PAGE}), {"task": "ocr"})["format"] == 0.0


def test_json_fences_are_read_as_before():
    assert answer_text('```json\n[{"bbox_2d": [1, 2, 3, 4]}]```') == ('[{"bbox_2d": [1, 2, 3, 4]}]', True, False)
