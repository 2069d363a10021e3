"""Answer parsing on the formats Qwen-VL models really emit."""

import pytest

from perception_r1_verl.parsing import MAX_ITEMS, parse_answer, render_answer

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
    cut = full[: full.index('"c"') - 3]
    a = parse_answer(cut)
    assert a.truncated and a.boxes.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]] and a.n_items == 3 and a.n_invalid == 1


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


@pytest.mark.parametrize("text", ["", "   ", "<", "<|box_start|", "I cannot see anything.", "null", "42", '"str"', None, 17])
def test_no_answer(text):
    a = parse_answer(text)
    assert not a.parsed and a.n_items == 0 and len(a.boxes) == 0


def test_empty_list_is_an_answer():
    a = parse_answer("```json\n[]\n```")
    assert a.parsed and a.n_items == 0 and not a.truncated


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("think", [False, True])
def test_render_parse_round_trip(family, think):
    gt = {"objects": [{"bbox_2d": [1, 2, 30, 40], "label": "traffic light"}, {"bbox_2d": [5.5, 6, 7, 8], "label": "cat"}]}
    a = parse_answer(render_answer("detection", gt, family, think), think)
    assert a.tags_ok and not a.truncated and a.n_invalid == 0
    assert a.style == ("box_tokens" if family == "qwen2_vl" else "json")
    assert a.boxes.tolist() == [[1, 2, 30, 40], [5.5, 6, 7, 8]] and a.labels == ["traffic light", "cat"]
