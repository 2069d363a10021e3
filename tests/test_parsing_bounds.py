"""Reading is linear-time by construction (issue 18): any repetition loop of any answer
syntax, at 100 KB, costs ``compute_score`` at most ``WORST_CASE_BOUND`` times a
well-formed answer of the same length, measured in the same test; and the hard caps on
what is read count as truncation or as spam."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from perception_r1_verl.parsing import MAX_BLOCKS, MAX_CHARS, MAX_ITEMS, parse_answer

PATH = Path(__file__).resolve().parents[1] / "bench" / "bench_rewards.py"
spec = importlib.util.spec_from_file_location("bench_rewards", PATH)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench
spec.loader.exec_module(bench)

TASKS = ("detection", "grounding", "counting")
# Pieces of every answer syntax the parser reads (JSON, Python literals, Qwen2-VL box
# tokens, Qwen-VL tags, plain boxes, think/answer tags, fences, end tokens), and the
# characters its patterns look at.
ATOMS = [
    '{"bbox_2d": [', '{"point_2d": [', '"label": "', '"1', "  1", "1", "-", ".", "0.5", ", ", ",", "]", "[",
    "{", "}", '"', "'", "\\", "True", "None", "(", ")", " ", "\n", "\t",
    "<|box_start|>", "<|box_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "(1,2)", "(1,2),(3,4)",
    "<ref>", "</ref>", "<box>", "</box>", "<think>", "</think>", "<answer>", "</answer>", "```json\n", "```", "```markdown\n", "\n```python\n", "\n```\n",
    "<|im_end|>", "<|endoftext|>",
]  # fmt: skip
SETTINGS = settings(
    max_examples=int(os.environ.get("PR1_HYPOTHESIS_EXAMPLES", 60)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def repetition_loops(draw) -> str:
    """A prefix, then a unit repeated to 100 KB: what a policy stuck in a loop writes."""
    prefix = "".join(draw(st.lists(st.sampled_from(ATOMS), max_size=3)))
    unit = "".join(draw(st.lists(st.one_of(st.sampled_from(ATOMS), st.text(max_size=3)), min_size=1, max_size=4)))
    assume(unit)
    return bench.repetition_loop(prefix, unit)


@pytest.fixture(scope="module")
def well_formed():
    """task -> (ground truth, extra_info, CPU seconds of a well-formed 100 KB answer)."""
    out = {}
    for task in TASKS:
        text, truth, extra = bench.well_formed(task)
        out[task] = truth, extra, bench.call_time(lambda: bench.compute_score("t", text, truth, extra), 5)  # noqa: B023
    return out


@SETTINGS
@given(text=repetition_loops(), task=st.sampled_from(TASKS), think=st.booleans())
def test_any_repetition_loop_costs_a_bounded_multiple_of_a_well_formed_answer(well_formed, text, task, think):
    truth, extra, base = well_formed[task]
    extra = extra | {"think": think}
    spent = bench.call_time(lambda: bench.compute_score("t", text, truth, extra), 2)
    assert spent <= bench.WORST_CASE_BOUND * base, (spent / base, text[:120])


@pytest.mark.parametrize("name", sorted(bench.HOSTILE))
def test_every_named_loop_of_the_bench_is_within_the_bound(well_formed, name):
    text = bench.repetition_loop(*bench.HOSTILE[name])
    for task in TASKS:
        truth, extra, base = well_formed[task]
        spent = bench.call_time(lambda: bench.compute_score("t", text, truth, extra), 2)  # noqa: B023
        assert spent <= bench.WORST_CASE_BOUND * base, (task, spent / base)


def test_the_issues_exponential_string_reads_as_before_when_short():
    """The string that took seconds at 99 characters: its item is malformed, as it was."""
    a = parse_answer('[{"bbox_2d": ["1' + "  1" * 22 + ' x", 2, 30, 40]}]')
    assert (a.style, a.n_items, a.n_invalid, len(a.boxes)) == ("json", 1, 1, 0)
    a = parse_answer('[{"bbox_2d": ["1  2", "30 , 40"], "label": "x"}]')
    assert a.boxes.tolist() == [[1, 2, 30, 40]] and a.repaired


def test_characters_past_the_cap_are_not_read_and_count_as_truncation():
    item = '{"bbox_2d": [1, 2, 3, 4], "label": "a"}, '
    whole = "[" + item * (MAX_CHARS // len(item) - 1)
    assert not parse_answer(whole[:-2] + "]").truncated
    a = parse_answer("[" + item * (2 * MAX_CHARS // len(item)))
    assert a.truncated and a.n_items <= MAX_CHARS // len(item) + 1  # the last one cut


def test_blocks_past_the_cap_are_not_read_and_count_as_truncation():
    block = "```json\n[[1, 2, 3, 4]]\n```\n"
    a = parse_answer(block * (MAX_BLOCKS + 5))
    assert a.truncated and a.n_items == MAX_BLOCKS
    assert not parse_answer(block * MAX_BLOCKS).truncated


@pytest.mark.parametrize(
    "unit",
    [
        "<|box_start|>(1,2),(3,4)<|box_end|>",  # 1200 of each stay under MAX_CHARS
        "<ref>a</ref><box>(1,2),(3,4)</box>",
        "{'bbox_2d': [1, 2, 3, 4]}, ",
    ],
)
def test_items_past_the_cap_are_counted_as_invalid_not_read(unit):
    n = MAX_ITEMS + 200
    a = parse_answer(unit * n)
    assert a.n_items == n and a.n_invalid == 200 and len(a.boxes) == MAX_ITEMS


def test_an_unclosed_ref_does_not_hide_the_boxes_after_it():
    a = parse_answer("<ref>dog<box>(1,2),(3,4)</box><box>(5,6),(7,8)</box>" + "<ref>" * 1000)
    assert a.boxes.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]] and a.labels == [None, None]
    a = parse_answer("<ref>dog</ref><box>(1,2),(3,4)</box><ref>cat</ref><box>(5,6),(7,8)</box>")
    assert a.labels == ["dog", "cat"]
