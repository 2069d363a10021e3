"""A fifth task, "color" (name the colour of an object in one word), registered in every
layer's registry the way docs/adding_a_task.md says, and run through each of them:
prompt, exact answer, reward, metric and summary, the HTML report and the rollout rules.

Nothing here branches on the task: if a layer looked a task up anywhere but its registry,
"color" would fail there (an unknown task, a missing key, or a number these tests check).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from io import BytesIO
from typing import ClassVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eval_fixtures import png, write_responses
from PIL import Image

from perception_r1_verl import rewards
from perception_r1_verl.eval import metrics
from perception_r1_verl.eval.dataset import Sample
from perception_r1_verl.eval.rollouts import judging
from perception_r1_verl.eval.score import score, score_samples
from perception_r1_verl.labels import normalise_label
from perception_r1_verl.parsing import answer_text, parse_answer
from perception_r1_verl.prompts import PROMPTS, prompt_text, register_prompt
from perception_r1_verl.rewards import render_answer, render_text

SWATCH = (255, 0, 255)  # what the toy metric draws on every case image


@dataclass(frozen=True)
class ColorReward:
    """``correct_weight * [the word names the colour] + format_weight * [one word]``."""

    components: ClassVar[tuple] = ("correct", "format")
    correct_weight: float = 1.0
    format_weight: float = 1.0

    @property
    def max_score(self) -> float:
        return self.correct_weight + self.format_weight

    @staticmethod
    def render_answer(gt: dict, model_family: str, think: bool = False) -> str:
        return render_text(gt["color"], think)

    @staticmethod
    def prepare(gt: dict) -> str:
        return normalise_label(gt["color"])

    def __call__(self, completion, gt, think=False, style=None) -> dict:
        text, tags_ok, truncated = answer_text(completion, think)
        correct = float(normalise_label(text) == gt)
        fmt = float(tags_ok and not truncated and len(text.split()) == 1)
        return {"score": self.correct_weight * correct + self.format_weight * fmt, "correct": correct, "format": fmt}


def color_prompt(fields, json_family: bool) -> str:
    return f"What colour is the {fields.label}? Answer with one word."


class ColorMetric(metrics.Metric):
    case_fields = ("said",)

    def sample(self, answer, gt):
        said = normalise_label(answer.text)
        return {"score": float(said == normalise_label(gt["color"])), "said": said}

    def summarize(self, records):
        return {"Acc": float(np.mean([r["score"] for r in records]))}

    def draw_case(self, draw, size, sample, record, response, scored, width):
        draw.rectangle([0, 0, size[0] // 2, size[1] // 2], fill=SWATCH)

    def case_note(self, sample, record, response):
        return f'<div class="meta">truth: {sample.ground_truth["color"]}</div>'


@pytest.fixture
def color_task():
    """The task "color" in the reward, prompt and metric registries, for one test only."""
    rewards.register("color")(ColorReward)
    register_prompt("color")(color_prompt)
    metrics.register("color")(ColorMetric)
    yield
    for registry in (rewards.REWARDS, PROMPTS, metrics.METRICS):
        del registry["color"]
    rewards._reward.cache_clear()  # configured rewards and parsed truths are cached by task name
    rewards._truth.cache_clear()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("think", [False, True])
def test_prompt_render_and_reward(color_task, family, think):
    text = prompt_text("color", family, label="car", think=think)
    assert text.startswith("<image>What colour is the car? Answer with one word.")
    assert text.endswith("</answer> tags.") == think
    gt = {"color": "Red"}
    exact = render_answer("color", gt, family, think)
    assert exact == ("<think>\n</think>\n<answer>Red</answer>" if think else "Red")
    info = {"task": "color", "model_family": family, "think": think}
    best = rewards.compute_score("my_colours", exact, json.dumps(gt), info)
    assert best == {"score": 2.0, "correct": 1.0, "format": 1.0}
    assert best["score"] == rewards.max_score("color")
    wrong = rewards.compute_score("my_colours", render_answer("color", {"color": "dark blue"}, family, think), gt, info)
    assert wrong == {"score": 0.0, "correct": 0.0, "format": 0.0}
    assert rewards.max_score("color", color={"format_weight": 0.5}) == 1.5  # per-task settings reach it
    assert "correct" in rewards.component_keys()  # what the reward manager logs per step


def _samples(colors, groups):
    return [
        Sample(i, str(i), "color", group.split("/")[0], {"color": c}, {"task": "color", "split": group.split("/")[1]})
        for i, (c, group) in enumerate(zip(colors, groups))
    ]


def test_metric_and_summary(color_task):
    samples = _samples(["red", "green", "blue", "red"], ["toy/val", "toy/val", "toy/test", "toy/test"])
    scored = score_samples(samples, {"0": "Red", "1": "blue", "2": "<answer>blue"})
    m = scored.metrics
    assert m["task"] == "color" and m["Acc"] == 0.5
    # Free text: no answer style to miss, so nothing is "unparsable"; the missing one is counted.
    assert (m["n_missing"], m["n_unparsable"], m["n_empty"], m["n_truncated"]) == (1, 0, 0, 1)
    assert m["by_split"] == {"toy/test": {"n_samples": 2, "Acc": 0.5}, "toy/val": {"n_samples": 2, "Acc": 0.5}}
    assert [r["said"] for r in scored.records] == ["red", "blue", "blue", ""]
    assert [r["group"] for r in scored.records] == ["toy/val", "toy/val", "toy/test", "toy/test"]


def test_score_writes_the_report_through_the_metric(color_task, tmp_path):
    image = png()
    colors = ["red", "green", "blue"]
    rows = [
        {
            "data_source": "toy",
            "prompt": [{"role": "user", "content": prompt_text("color", "qwen2_5_vl", label="ball")}],
            "images": [{"bytes": image}],
            "reward_model": {"style": "rule", "ground_truth": json.dumps({"color": c})},
            "extra_info": {"task": "color", "index": i, "split": "val"},
        }
        for i, c in enumerate(colors)
    ]
    data = tmp_path / "color.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    responses = write_responses(tmp_path / "r.jsonl", ["red", "GREEN", "purple"])
    m = score(data, responses, tmp_path / "out", top_k=1)
    assert m["Acc"] == pytest.approx(2 / 3)
    assert "| all | 3 | 66.7 |" in (tmp_path / "out" / "metrics.md").read_text()
    records = [orjson.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_bytes().splitlines()]
    assert [r["said"] for r in records] == ["red", "green", "purple"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<h1>color: color.parquet</h1>" in page
    assert "index 0 | score 1.000 | said red" in page and "index 2 | score 0.000 | said purple" in page
    assert "truth: blue" in page
    images = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(images) == 2  # the best and the worst case, drawn by the metric
    for b64 in images:
        pixel = Image.open(BytesIO(base64.b64decode(b64))).convert("RGB").getpixel((5, 5))
        assert np.abs(np.subtract(pixel, SWATCH)).max() < 40


def test_rollout_rules_follow_the_metric(color_task):
    # Free text: a word is a fine answer (no box style asked for), wrong tags are not.
    assert judging.judge("color", parse_answer("red"), judging.n_truth("color", {"color": "red"})) == {}
    assert judging.judge("color", parse_answer("<answer>red", think=True), 0) == {
        "unparsable": "think/answer tags not as asked"
    }


def test_unregistered_task_is_unknown_in_every_layer():
    sample = _samples(["red"], ["toy/val"])
    with pytest.raises(ValueError, match="unknown task 'color': no prompt"):
        prompt_text("color", "qwen2_5_vl", label="car")
    with pytest.raises(ValueError, match="unknown perception task 'color': no reward"):
        render_answer("color", {"color": "red"}, "qwen2_5_vl")
    with pytest.raises(ValueError, match="unknown perception task 'color'"):
        rewards.compute_score("toy", "red", '{"color": "red"}', {"task": "color"})
    with pytest.raises(ValueError, match="unknown task 'color': no metric"):
        score_samples(sample, {"0": "red"})


def test_a_task_registers_once_per_layer(color_task):
    with pytest.raises(ValueError, match="already has a prompt"):
        register_prompt("color")(lambda fields, json_family: "another")
    with pytest.raises(ValueError, match="already has a reward"):
        rewards.register("color")(type("Other", (ColorReward,), {}))
    with pytest.raises(ValueError, match="already has a metric"):
        metrics.register("color")(ColorMetric)
