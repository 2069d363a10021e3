"""Properties every reward keeps on any input: no exception, finite, bounded, deterministic;
order does not matter; repeating a box never pays; the exact answer scores the maximum."""

import json
import math
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perception_r1_verl.rewards import compute_score, max_score, render_answer

# An overflow or 0/0 inside a reward is a bug even when the result stays finite.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")
# PR1_HYPOTHESIS_EXAMPLES=5000 for a longer hunt than CI's.
SETTINGS = settings(
    max_examples=int(os.environ.get("PR1_HYPOTHESIS_EXAMPLES", 150)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FAMILIES = st.sampled_from(["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", None])
LABELS = st.sampled_from(["cat", "dog", "traffic light", "Cat", "", "unknown thing"])
NUMBERS = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([0, 1e308, -1e308, 1e-300, 2**70]),
)
COORD = st.integers(0, 99)


@st.composite
def boxes(draw):
    x1, x2 = sorted(draw(st.lists(COORD, min_size=2, max_size=2)))
    y1, y2 = sorted(draw(st.lists(COORD, min_size=2, max_size=2)))
    return [x1, y1, x2 + 1, y2 + 1]


@st.composite
def json_like(draw):
    """Completions that look like model answers, malformed in every way the parser must survive."""
    item = st.one_of(
        st.fixed_dictionaries(
            {"bbox_2d": st.lists(NUMBERS, max_size=5), "label": st.one_of(LABELS, st.integers(), st.none())}
        ),
        st.fixed_dictionaries({"point_2d": st.lists(NUMBERS, max_size=3)}),
        st.lists(NUMBERS, max_size=5),
        st.text(max_size=5),
        st.none(),
        st.booleans(),
    )
    text = json.dumps(draw(st.lists(item, max_size=12)))
    cut = draw(st.integers(0, len(text)))
    prefix = draw(st.sampled_from(["", "```json\n", "<answer>", "<think>x</think><answer>", "<"]))
    return prefix + (text[:cut] if draw(st.booleans()) else text)


COMPLETIONS = st.one_of(
    st.text(max_size=200),
    json_like(),
    st.builds(
        lambda b: "<|box_start|>({},{}),({},{})<|box_end|>".format(*b), st.lists(NUMBERS, min_size=4, max_size=4)
    ),
)

GROUND_TRUTHS = {
    "grounding": st.builds(lambda b: {"bbox_2d": b, "frame": [100, 100]}, boxes()),
    "counting": st.builds(
        lambda ps: {"count": len(ps), "points": ps, "frame": [100, 100]},
        st.lists(st.lists(COORD, min_size=2, max_size=2), max_size=8),
    ),
    "ocr": st.builds(lambda t: {"text": t}, st.text(max_size=60)),
    "detection": st.builds(
        lambda objs: {
            "objects": [{"bbox_2d": b, "label": lab} for b, lab in objs],
            "frame": [100, 100],
            "categories": ["cat", "dog", "traffic light"],
        },
        st.lists(st.tuples(boxes(), st.sampled_from(["cat", "dog", "traffic light"])), max_size=8),
    ),
}
LOWER = {"grounding": 0.0, "counting": 0.0, "ocr": 0.0, "detection": -1.0}


def _score(task, completion, gt, family=None, think=False):
    extra = {"task": task, "model_family": family, "think": think}
    return compute_score(task, completion, json.dumps(gt), extra)


@st.composite
def task_cases(draw):
    task = draw(st.sampled_from(sorted(GROUND_TRUTHS)))
    return task, draw(GROUND_TRUTHS[task])


@SETTINGS
@given(task_cases(), COMPLETIONS, FAMILIES, st.booleans())
def test_never_raises_finite_bounded_deterministic(case, completion, family, think):
    task, gt = case
    first = _score(task, completion, gt, family, think)
    assert first == _score(task, completion, gt, family, think)
    for key, value in first.items():
        assert type(value) is float and math.isfinite(value), (key, value)
    assert LOWER[task] - 1e-9 <= first["score"] <= max_score(task) + 1e-9


@SETTINGS
@given(task_cases(), st.sampled_from(["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"]), st.booleans())
def test_exact_answer_scores_the_maximum(case, family, think):
    task, gt = case
    assert _score(task, render_answer(task, gt, family, think), gt, family, think)["score"] == max_score(task)


DET = GROUND_TRUTHS["detection"]
PREDS = st.lists(st.tuples(boxes(), st.sampled_from(["cat", "dog", "bird"])), max_size=10)


def _items(preds):
    return json.dumps([{"bbox_2d": b, "label": lab} for b, lab in preds])


@SETTINGS
@given(DET, PREDS, st.randoms(use_true_random=False))
def test_detection_order_invariant(gt, preds, rnd):
    unique = list({tuple(b): (b, lab) for b, lab in preds}.values())  # a repeat's first label wins by rule
    shuffled = unique[:]
    rnd.shuffle(shuffled)
    a, b = _score("detection", _items(unique), gt), _score("detection", _items(shuffled), gt)
    assert a["score"] == b["score"] or math.isclose(a["score"], b["score"], abs_tol=1e-9)


@SETTINGS
@given(DET, PREDS.filter(bool), st.data())
def test_repeating_a_box_never_raises_the_score(gt, preds, data):
    i = data.draw(st.integers(0, len(preds) - 1))
    label = data.draw(st.sampled_from(["cat", "dog", "bird", preds[i][1]]))
    repeated = preds + [(preds[i][0], label)]
    assert _score("detection", _items(repeated), gt)["score"] <= _score("detection", _items(preds), gt)["score"] + 1e-12


@SETTINGS
@given(DET.filter(lambda g: g["objects"]), st.integers(1, 60))
def test_spamming_boxes_lowers_the_score(gt, n):
    exact = [(o["bbox_2d"], o["label"]) for o in gt["objects"]]
    rng = random.Random(n)
    spam = [([rng.randrange(0, 50)] * 2 + [rng.randrange(50, 100)] * 2, "cat") for _ in range(n)]
    spam = [s for s in spam if s[0] not in [e[0] for e in exact]]
    if spam:
        assert _score("detection", _items(exact + spam), gt)["score"] < _score("detection", _items(exact), gt)["score"]


@SETTINGS
@given(GROUND_TRUTHS["counting"], st.randoms(use_true_random=False))
def test_counting_order_invariant(gt, rnd):
    points = [[p[0] + 1, p[1]] for p in gt["points"]]
    shuffled = points[:]
    rnd.shuffle(shuffled)
    text = lambda ps: json.dumps([{"point_2d": p} for p in ps])  # noqa: E731
    assert math.isclose(
        _score("counting", text(points), gt)["score"], _score("counting", text(shuffled), gt)["score"], abs_tol=1e-12
    )
