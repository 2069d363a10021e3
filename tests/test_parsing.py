"""Answer parsing on the formats Qwen-VL models really emit."""

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception_r1_verl.parsing import MAX_ITEMS, Answer, parse_answer
from perception_r1_verl.parsing.objects import _fast_boxes, _items
from perception_r1_verl.rewards import render_answer
from perception_r1_verl.rewards.format import format_score

QWEN25_FENCED = '```json\n[\n\t{"bbox_2d": [135, 114, 350, 436], "label": "person"},\n\t{"bbox_2d": [10, 20, 30, 40], "label": "dog"}\n]\n```'


def test_qwen25_fenced_json():
    a = parse_answer(QWEN25_FENCED)
    assert a.style == "json" and a.n_items == 2 and a.n_invalid == 0 and not a.truncated
    assert a.boxes.tolist() == [[135, 114, 350, 436], [10, 20, 30, 40]]
    assert a.labels == ["person", "dog"]


@pytest.mark.parametrize(
    "text",
    [
        '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]',
        '{"bbox_2d": [1, 2, 3, 4], "label": "a"}',
        '<answer>```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]\n```</answer>',
        '  ```\n[{"bbox_2d": [1.0, 2.0, 3.0, 4.0], "label": "a"}]\n```  ',
    ],
)
def test_json_variants(text):
    a = parse_answer(text)
    assert a.style == "json" and a.boxes.tolist() == [[1, 2, 3, 4]] and a.labels == ["a"] and not a.truncated


def test_think_then_answer():
    text = '<think>There is one cat.</think>\n<answer>[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]</answer>'
    a = parse_answer(text, think=True)
    assert a.tags_ok and a.boxes.tolist() == [[1, 2, 3, 4]]
    # Asked to think but did not: the answer still parses, the tags are wrong.
    b = parse_answer('[{"bbox_2d": [1, 2, 3, 4]}]', think=True)
    assert not b.tags_ok and len(b.boxes) == 1
    # Text outside the answer tags breaks the requested structure.
    assert not parse_answer(text + " extra", think=True).tags_ok


def test_points():
    a = parse_answer('[{"point_2d": [5, 6], "label": "coin"}, {"point_2d": [7, 8]}]')
    assert a.points.tolist() == [[5, 6], [7, 8]] and a.n_items == 2 and len(a.boxes) == 0


def test_qwen2_box_tokens():
    text = (
        "<|object_ref_start|>the man<|object_ref_end|><|box_start|>(12,34),(560,780)<|box_end|>"
        "<|object_ref_start|>a dog<|object_ref_end|><|box_start|>(1, 2),(3, 4)<|box_end|>"
    )
    a = parse_answer(text)
    assert a.style == "box_tokens" and a.labels == ["the man", "a dog"]
    assert a.boxes.tolist() == [[12, 34, 560, 780], [1, 2, 3, 4]]
    cut = parse_answer(text + "<|box_start|>(1,2),(3")
    assert cut.truncated and cut.n_items == 3 and cut.n_invalid == 1 and len(cut.boxes) == 2


@pytest.mark.parametrize("text", ["The box is [10, 20, 30, 40].", "(10,20),(30,40)", "the man(10,20),(30,40)"])
def test_plain(text):
    a = parse_answer(text)
    assert a.style == "plain" and a.boxes.tolist() == [[10, 20, 30, 40]]


def test_truncated_json_keeps_complete_objects():
    full = '```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}, {"bbox_2d": [9, 10, 11, 12], "label": "c"}]\n```'
    cut = full[: full.index("11")]  # inside the third box: it is not one
    a = parse_answer(cut)
    assert a.truncated and a.boxes.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]] and a.n_items == 3 and a.n_invalid == 1
    # Cut after the third box, inside its label: the box is complete, its label is not.
    a = parse_answer(full[: full.index('"c"') - 3])
    assert (
        a.truncated
        and a.boxes.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
        and a.labels == ["a", "b", None]
    )


def test_malformed_items_are_counted_not_fatal():
    text = '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7], "label": "b"}, {"bbox_2d": [9, 9, 1, 1]}, "junk", {"bbox_2d": ["x", 2, 3, 4]}, {"bbox_2d": [true, 2, 3, 4]}]'
    a = parse_answer(text)
    assert a.boxes.tolist() == [[1, 2, 3, 4]] and a.n_items == 6 and a.n_invalid == 5 and not a.repaired
    # Broken JSON syntax in one item: the other items survive.
    b = parse_answer('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8] "label": "b"}]')
    assert b.boxes.tolist() == [[1, 2, 3, 4]] and b.n_items == 2 and b.n_invalid == 1 and not b.truncated


def test_spam_is_capped_and_counted():
    text = "[" + ", ".join(['{"bbox_2d": [1, 2, 3, 4], "label": "a"}'] * (MAX_ITEMS + 50)) + "]"
    a = parse_answer(text)
    assert a.n_items == MAX_ITEMS + 50 and a.n_invalid == 50


@pytest.mark.parametrize(
    "text", ["", "   ", "<", "<|box_start|", "I cannot see anything.", "null", "42", '"str"', None, 17]
)
def test_no_answer(text):
    a = parse_answer(text)
    assert not a.parsed and a.n_items == 0 and len(a.boxes) == 0


def test_empty_list_is_an_answer():
    a = parse_answer("```json\n[]\n```")
    assert a.parsed and a.n_items == 0 and not a.truncated


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"])
@pytest.mark.parametrize("think", [False, True])
def test_render_parse_round_trip(family, think):
    gt = {
        "objects": [{"bbox_2d": [1, 2, 30, 40], "label": "traffic light"}, {"bbox_2d": [5.5, 6, 7, 8], "label": "cat"}]
    }
    a = parse_answer(render_answer("detection", gt, family, think), think)
    assert a.tags_ok and not a.truncated and a.n_invalid == 0
    assert a.style == ("box_tokens" if family == "qwen2_vl" else "json")
    assert a.boxes.tolist() == [[1, 2, 30, 40], [5.5, 6, 7, 8]] and a.labels == ["traffic light", "cat"]


# ---------------------------------------------------------------- lenient reading, strict format
# Synthetic cases, one per class of real output issue 9 names (the verbatim ones are in
# tests/data/real_outputs): (text, boxes, labels, n_items, n_invalid, truncated, repaired).
A, B = '{"bbox_2d": [1, 2, 3, 4], "label": "a"}', '{"bbox_2d": [5, 6, 7, 8], "label": "b"}'
AB = ([[1, 2, 3, 4], [5, 6, 7, 8]], ["a", "b"])
SYNTHETIC = {
    "trailing-commas": (
        '[{"bbox_2d": [1, 2, 3, 4], "label": "a",}, {"bbox_2d": [5, 6, 7, 8,], "label": "b",},]',
        *AB,
        2,
        0,
        False,
        True,
    ),
    "nested-values": (
        '[{"bbox_2d": [1, 2, 3, 4], "label": "a", "names": {"en": "a", "zh": "甲"}}, ' + B + "]",
        *AB,
        2,
        0,
        False,
        False,
    ),
    "nested-values-broken": (
        '[{"bbox_2d": [1, 2, 3, 4], "label": "a", "names": {"en": "a",}}, ' + B + "]",
        *AB,
        2,
        0,
        False,
        True,
    ),
    "stray-brace": (f"[{A}, {{\n{B}]", *AB, 2, 0, False, True),
    "junk-brace-item": (f"[{A}, {{x, {B}]", *AB, 3, 1, False, True),
    "missing-close-brace": ('[{"bbox_2d": [1, 2, 3, 4], "label": "a", ' + B + "]", *AB, 2, 0, False, True),
    "missing-close-brace-last": (f'[{A}, {{"bbox_2d": [5, 6, 7, 8], "label": "b"]', *AB, 2, 0, False, True),
    "prose-before-list": (f"Here are the objects: [{A}, {B}]", *AB, 2, 0, False, True),
    "prose-around-object": (f"The object {A} is the only one.", [[1, 2, 3, 4]], ["a"], 1, 0, False, True),
    "prose-braces-then-object": (f"Template {{label}}: {A}", [[1, 2, 3, 4]], ["a"], 1, 0, False, True),
    "bare-then-im-end": (f"[{A}, {B}]<|im_end|>", *AB, 2, 0, False, False),
    "bare-then-end-tokens": (f"[{A}, {B}]\n<|im_end|>\n<|endoftext|>", *AB, 2, 0, False, False),
    "python-quotes": (
        "[{'bbox_2d': [1, 2, 3, 4], 'label': 'a'}, {'bbox_2d': [5, 6, 7, 8], 'label': \"b's\"}]",
        [[1, 2, 3, 4], [5, 6, 7, 8]],
        ["a", "b's"],
        2,
        0,
        False,
        True,
    ),
    "python-literals": (
        "{'bbox_2d': [1, 2, 3, 4], 'label': 'a', 'occluded': True, 'note': None}",
        [[1, 2, 3, 4]],
        ["a"],
        1,
        0,
        False,
        True,
    ),
    "several-fences": (f"```json\n[{A}]\n```\nand\n```json\n[{B}]\n```", *AB, 2, 0, False, False),
    "fence-mark-in-label": (
        '[{"bbox_2d": [1, 2, 3, 4], "label": "a```"}]',
        [[1, 2, 3, 4]],
        ["a```"],
        1,
        0,
        False,
        False,
    ),
    "several-fences-last-cut": (f"```json\n[{A}]\n```\n```json\n[{B}", *AB, 2, 0, True, True),
    "string-coordinates": (
        '[{"bbox_2d": ["1", "2", "3", "4"], "label": "a"}, {"bbox_2d": ["5, 6, 7, 8"], "label": "b"}]',
        *AB,
        2,
        0,
        False,
        True,
    ),
    "escaped-lone-surrogate": (
        '[{"bbox_2d": [1, 2, 3, 4], "label": "a\\ud800"}]',
        [[1, 2, 3, 4]],
        ["a\ufffd"],
        1,
        0,
        False,
        False,
    ),
    "raw-lone-surrogate": (
        '[{"bbox_2d": [1, 2, 3, 4], "label": "a\ud800"}]',
        [[1, 2, 3, 4]],
        ["a\ufffd"],
        1,
        0,
        False,
        False,
    ),
    "surrogate-repaired": (
        "[{'bbox_2d': [1, 2, 3, 4], 'label': 'a\ud800'}]",
        [[1, 2, 3, 4]],
        ["a\ufffd"],
        1,
        0,
        False,
        True,
    ),
    "cut-inside-nested": (
        '[{"bbox_2d": [1, 2, 3, 4], "label": "a", "n": {"en": "a"}}, {"bbox_2d": [5, 6, 7, 8], "label": "b", "n": {"en": "b',
        *AB,
        2,
        0,
        True,
        True,
    ),
    "cut-inside-box": (f'[{A}, {{"bbox_2d": [5, 6', [[1, 2, 3, 4]], ["a"], 2, 1, True, True),
    "ref-box-tags": (
        "<ref>two apples</ref><box>(1,2),(3,4)</box><box>(5,6),(7,8)</box> and <ref>a bowl</ref><box>(0,0),(9,9)</box>",
        [[1, 2, 3, 4], [5, 6, 7, 8], [0, 0, 9, 9]],
        ["two apples", "two apples", "a bowl"],
        3,
        0,
        False,
        False,
    ),
}


@pytest.mark.parametrize("name", SYNTHETIC)
def test_lenient_reading_synthetic(name):
    text, boxes, labels, n_items, n_invalid, truncated, repaired = SYNTHETIC[name]
    a = parse_answer(text)
    got = (a.boxes.tolist(), a.labels, a.n_items, a.n_invalid, a.truncated, a.repaired)
    assert got == (boxes, labels, n_items, n_invalid, truncated, repaired)
    assert a.style in ("json", "ref_box")


@pytest.mark.parametrize("name", SYNTHETIC)
def test_format_pays_only_strict_complete_answers(name):
    text, boxes, _, n_items, n_invalid, truncated, repaired = SYNTHETIC[name]
    fmt = format_score(parse_answer(text))
    assert fmt == (0.0 if truncated or repaired else 1.0 - n_invalid / n_items)


def test_points_in_box_tokens():
    a = parse_answer(
        "<|object_ref_start|>coin<|object_ref_end|><|box_start|>(10,20)<|box_end|><|box_start|>(30, 40)<|box_end|>"
    )
    assert a.style == "box_tokens" and a.points.tolist() == [[10, 20], [30, 40]] and len(a.boxes) == 0
    assert a.n_items == 2 and a.n_invalid == 0 and format_score(a, "box_tokens") == 1.0


def test_end_tokens_cost_nothing_fenced_or_bare():
    for text in [f"[{A}]", f"```json\n[{A}]\n```"]:
        plain, ended = parse_answer(text), parse_answer(text + "<|im_end|>")
        assert (ended.boxes.tolist(), ended.truncated, format_score(ended)) == (plain.boxes.tolist(), False, 1.0)
    # Inside the answer tags an end token does not close them: the answer is unfinished.
    assert parse_answer(f"<answer>[{A}]<|im_end|>").truncated


def test_adversarial_braces_never_raise():
    for text in [
        "{" * 20000,
        "{}" * 10000,
        '{"' * 10000,
        "[" + "{, " * 5000 + "]",
        "{'a': " * 3000,
        "[{'bbox_2d': [1, 2, 3, " + "9" * 5000 + "]}]",
        "[" + "{" * 2000 + "}" * 2000 + "]",
    ]:
        a = parse_answer(text)
        assert a.style == "json" and len(a.boxes) == 0 and a.n_invalid == a.n_items


# ---------------------------------------------------------------- fast path == general path

_COORD = st.one_of(st.integers(-5, 50), st.floats(-5, 50, allow_nan=False), st.sampled_from([1e308, 2**64, -(2**70)]))
# Text holding "true", "false" or "null" sends a list to the item path by design (see _fast_boxes).
_LABEL = st.text(max_size=8).filter(lambda t: not any(w in t for w in ("true", "false", "null")))
_WELL_FORMED = st.fixed_dictionaries(
    {"bbox_2d": st.lists(_COORD, min_size=4, max_size=4)}, optional={"label": st.one_of(_LABEL, st.integers())}
)
_ILL_FORMED = st.one_of(
    _WELL_FORMED,
    st.fixed_dictionaries({"bbox_2d": st.lists(_COORD, max_size=6)}, optional={"label": st.none()}),
    st.fixed_dictionaries(
        {"bbox_2d": st.lists(st.one_of(_COORD, st.text(max_size=3), st.booleans(), st.none()), min_size=4, max_size=4)}
    ),
    st.fixed_dictionaries({"point_2d": st.lists(_COORD, min_size=2, max_size=2)}),
    st.lists(_COORD, min_size=4, max_size=4),
    st.text(max_size=4),
    st.none(),
)


def _general(data) -> Answer:
    answer = Answer()
    _items(data, answer)
    return answer


def _same(fast: Answer, general: Answer):
    assert fast.boxes.tolist() == general.boxes.tolist()
    assert fast.labels == general.labels
    assert (fast.n_items, fast.n_invalid, fast.style) == (general.n_items, general.n_invalid, general.style)


@settings(max_examples=300, deadline=None)
@given(st.lists(_WELL_FORMED, min_size=1, max_size=30))
def test_fast_path_is_the_general_path_on_well_formed_lists(data):
    body = json.dumps(data)  # json, not orjson: 2**64 and beyond are written as integers
    fast = Answer()
    assert _fast_boxes(orjson.loads(body), body, fast)  # the common case takes the fast path
    _same(fast, _general(orjson.loads(body)))
    _same(parse_answer(body), fast)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ILL_FORMED, max_size=30))
def test_fast_path_is_the_general_path_or_declines(data):
    body = json.dumps(data)  # json, not orjson: 2**64 and beyond are written as integers
    fast = Answer()
    if _fast_boxes(orjson.loads(body), body, fast):
        _same(fast, _general(orjson.loads(body)))
    _same(parse_answer(body), _general(orjson.loads(body)))


_FRAGMENTS = st.sampled_from(
    [
        "{",
        "}",
        "[",
        "]",
        '"',
        "'",
        ",",
        ":",
        " ",
        "\n",
        "\\",
        "1",
        "2.5",
        "-3",
        '"bbox_2d"',
        "'bbox_2d'",
        '"point_2d"',
        '"label"',
        '"cat"',
        "True",
        "null",
        "```json\n",
        "```",
        "<|im_end|>",
        "\ud800",
        "é",
        "<|box_start|>(1,2),(3,4)<|box_end|>",
        "<ref>x</ref>",
        "<box>(1,2)</box>",
        "[1, 2, 3, 4]",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_FRAGMENTS, max_size=60).map("".join), st.booleans())
def test_any_mix_of_answer_syntax_parses_consistently(text, think):
    a = parse_answer(text, think)
    assert len(a.labels) == len(a.boxes) and 0 <= a.n_invalid <= a.n_items
    assert len(a.boxes) + len(a.points) == a.n_items - a.n_invalid
    assert all(label is None or label.encode("utf-8") for label in a.labels)  # no lone surrogates
    assert a.parsed or a.n_items == 0
