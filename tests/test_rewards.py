"""Hand-computed reward values, independent implementations, and the released code's defects."""

import json
import math
from pathlib import Path

import editdistance
import numpy as np
import pytest

from perception_r1_verl.boxes import iou, pairwise_iou_giou
from perception_r1_verl.rewards import DetectionReward, compute_score, get_reward, max_score, task_of
from perception_r1_verl.rewards.detection import geometry
from perception_r1_verl.rewards.ocr import edit_similarity, normalise_text

COCO_80 = json.loads(
    '["person","bicycle","car","motorcycle","airplane","bus","train","truck","boat","traffic light","fire hydrant",'
    '"stop sign","parking meter","bench","bird","cat","dog","horse","sheep","cow","elephant","bear","zebra","giraffe",'
    '"backpack","umbrella","handbag","tie","suitcase","frisbee","skis","snowboard","sports ball","kite","baseball bat",'
    '"baseball glove","skateboard","surfboard","tennis racket","bottle","wine glass","cup","fork","knife","spoon","bowl",'
    '"banana","apple","sandwich","orange","broccoli","carrot","hot dog","pizza","donut","cake","chair","couch",'
    '"potted plant","bed","dining table","toilet","tv","laptop","mouse","remote","keyboard","cell phone","microwave",'
    '"oven","toaster","sink","refrigerator","book","clock","vase","scissors","teddy bear","hair drier","toothbrush"]'
)


def score(task, completion, gt, **extra):
    return compute_score(f"test_{task}", completion, json.dumps(gt), {"task": task, **extra})


def items(*objects):
    return json.dumps([{"bbox_2d": b, "label": label} for b, label in objects])


# ---------------------------------------------------------------- geometry, independently


def _mask(box, size=64):
    m = np.zeros((size, size), bool)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = True
    return m


def test_iou_and_giou_agree_with_pixel_counting():
    rng = np.random.default_rng(0)
    for _ in range(300):
        a, b = (np.sort(rng.integers(0, 64, size=(2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]] for _ in range(2))
        ma, mb = _mask(a), _mask(b)
        union = (ma | mb).sum()
        expected = (ma & mb).sum() / union if union else 0.0
        assert iou(a.tolist(), b.tolist()) == pytest.approx(expected)
        i, g = pairwise_iou_giou(a[None].astype(float), b[None].astype(float))
        # The detection reward's own geometry, against a truth prepared once per prompt.
        truth = DetectionReward.prepare({"objects": [{"bbox_2d": b.tolist(), "label": "x"}], "frame": [64, 64]})
        ri, rg, l1 = geometry(a[None].astype(float), truth)
        assert i[0, 0] == pytest.approx(expected) and ri[0, 0] == pytest.approx(expected)
        hull = _mask([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]).sum()
        if hull:
            assert g[0, 0] == pytest.approx(expected - (hull - union) / hull) and rg[0, 0] == pytest.approx(g[0, 0])
        centre_size = lambda x: np.array([(x[0] + x[2]) / 2, (x[1] + x[3]) / 2, x[2] - x[0], x[3] - x[1]]) / 64  # noqa: E731
        assert l1[0, 0] == pytest.approx(np.abs(centre_size(a) - centre_size(b)).sum())


# ---------------------------------------------------------------- grounding

GT_BOX = {"bbox_2d": [0, 0, 10, 10], "frame": [100, 100]}


@pytest.mark.parametrize(
    "shape, expected",
    [("iou", 0.5 + 1), ("iou_squared", 0.25 + 1), ("iou_at_0.5", 1 + 1)],
)
def test_grounding_shapes(shape, expected):
    r = compute_score("refcoco", "[0, 0, 10, 5]", json.dumps(GT_BOX), {"task": "grounding"}, iou_shape=shape)
    assert r["score"] == pytest.approx(expected) and r["iou"] == pytest.approx(0.5)


def test_grounding_values():
    assert score("grounding", '[{"bbox_2d": [0, 0, 10, 10]}]', GT_BOX)["score"] == 2.0
    assert score("grounding", '[{"bbox_2d": [5, 0, 15, 10]}]', GT_BOX)["score"] == pytest.approx(1 / 3 + 1)
    # Clipped to the frame before scoring: the part outside the image is not there.
    assert score("grounding", "[-20, -20, 10, 10]", GT_BOX)["iou"] == 1.0
    # Two boxes for one expression: the first is scored, format is lost.
    r = score("grounding", "[0, 0, 10, 10] [50, 50, 60, 60]", GT_BOX)
    assert r["iou"] == 1.0 and r["format"] == 0.0
    # Degenerate and inverted boxes: no division by zero (the released IoU had no epsilon).
    assert score("grounding", "[5, 5, 5, 5]", GT_BOX)["iou"] == 0.0
    r = score("grounding", "[10, 10, 0, 0]", GT_BOX)
    assert r["iou"] == 0.0 and r["format"] == 0.0


def test_grounding_qwen2_box_tokens_and_style():
    text = "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(0,0),(10,10)<|box_end|>"
    assert score("grounding", text, GT_BOX, model_family="qwen2_vl")["score"] == 2.0
    # The style the prompt asked for is part of the format: JSON for Qwen2.5-VL.
    assert score("grounding", text, GT_BOX, model_family="qwen2_5_vl")["format"] == 0.0


@pytest.mark.parametrize("text", ["<", "<|box_start|>", "<think>", "<|im_start|>nothing", "<answer></answer>"])
def test_released_format_regex_defect(text):
    # Released: re.match with unescaped | gave format 1 to any text starting with "<".
    r = score("grounding", text, GT_BOX, model_family="qwen2_vl")
    assert r["format"] == 0.0 and r["score"] == 0.0


# ---------------------------------------------------------------- counting

COUNT_GT = {"count": 2, "points": [[10, 10], [50, 50]], "frame": [100, 100]}


def test_counting_values():
    r = score("counting", '[{"point_2d": [10, 10]}]', COUNT_GT)
    assert (r["ratio"], r["location"], r["exact"], r["score"]) == (0.5, 1.0, 0.0, 1.5)
    r = score("counting", '[{"point_2d": [13, 14]}, {"point_2d": [50, 50]}]', COUNT_GT)
    assert r["location"] == pytest.approx(1 - 2.5 / math.hypot(100, 100)) and r["exact"] == 1.0
    # Boxes count through their centres.
    r = score("counting", '[{"bbox_2d": [0, 0, 20, 20]}, {"bbox_2d": [40, 40, 60, 60]}]', COUNT_GT)
    assert r["score"] == 2.0
    # The paper's normalisation in the 0-1000 frame: 1000 * sqrt(2).
    gt = {"count": 1, "points": [[0, 0]], "frame": [1000, 1000]}
    assert score("counting", '[{"point_2d": [300, 400]}]', gt)["location"] == pytest.approx(
        1 - 500 / (1000 * math.sqrt(2))
    )


def test_counting_zero_objects_is_a_real_answer():
    # Released: empty ground truth or prediction raised and scored 0, so these taught nothing.
    zero = {"count": 0, "points": [], "frame": [100, 100]}
    assert score("counting", "[]", zero)["score"] == max_score("counting")
    assert score("counting", '[{"point_2d": [1, 1]}]', zero)["score"] == 1.0  # format only
    assert score("counting", "[]", COUNT_GT)["score"] == 1.0
    assert score("counting", "There are none.", zero)["score"] == 0.0


def test_counting_without_points_scores_the_count():
    gt = {"count": 3, "points": [], "frame": [100, 100]}
    pts = '[{"point_2d": [1, 1]}, {"point_2d": [2, 2]}, {"point_2d": [3, 3]}]'
    assert score("counting", pts, gt)["score"] == 2.0


# ---------------------------------------------------------------- OCR


def test_ocr_values_and_second_library():
    pairs = [("kitten", "sitting"), ("", "abc"), ("Grüße", "Grusse"), ("日本語の文", "日本の文章"), ("a\u0301", "á")]
    for p, g in pairs:
        p2, g2 = normalise_text(p), normalise_text(g)
        expected = 1 - editdistance.eval(p2, g2) / max(len(p2), len(g2), 1)
        assert edit_similarity(p2, g2) == pytest.approx(expected)
    assert score("ocr", "Hello\n  world", {"text": "Hello world"})["score"] == 2.0
    assert score("ocr", "", {"text": ""})["score"] == 2.0
    r = score("ocr", "", {"text": "text"})
    assert r["score"] == 0.0
    r = compute_score("page_ocr", "中文 文本", json.dumps({"text": "中文文本"}), whitespace="remove")
    assert r["edit_similarity"] == 1.0


def test_ocr_think_tags():
    gt = {"text": "abc"}
    assert score("ocr", "<think>read it</think><answer>abc</answer>", gt, think=True)["score"] == 2.0
    assert score("ocr", "abc", gt, think=True)["format"] == 0.0


# ---------------------------------------------------------------- detection

CAT, DOG = [0, 0, 10, 10], [20, 20, 40, 40]
DET_GT = {
    "objects": [{"bbox_2d": CAT, "label": "cat"}, {"bbox_2d": DOG, "label": "dog"}],
    "frame": [100, 100],
    "categories": ["cat", "dog", "bird"],
}


def test_detection_exact_and_partial():
    assert score("detection", items((CAT, "cat"), (DOG, "dog")), DET_GT)["score"] == 3.0
    r = score("detection", items((CAT, "cat")), DET_GT)
    # format .25 + F1(1, .5) * .75 + label 1 + IoU 1 - .5 * (0 + 1/2)
    assert r["score"] == pytest.approx(0.25 + 0.75 * (2 / 3) + 1 + 1 - 0.25)
    r = score("detection", items((CAT, "dog"), ([70, 70, 90, 90], "bird")), DET_GT)
    assert (r["precision"], r["recall"], r["label_accuracy"]) == (0.5, 0.5, 0.0)
    assert r["score"] == pytest.approx(0.25 + 0.75 * 0.5 + 0 + 1 - 0.5 * (0.5 + 0.5))


def test_detection_iou_threshold_and_clipping():
    shifted = [0, 0, 10, 20]  # IoU 0.5 with CAT: kept (>= 0.5)
    assert score("detection", items((shifted, "cat")), DET_GT)["precision"] == 1.0
    worse = [0, 0, 10, 21]
    assert score("detection", items((worse, "cat")), DET_GT)["precision"] == 0.0
    outside = [-50, -50, 10, 10]  # clipped to the image: exactly CAT
    assert score("detection", items((outside, "cat"), (DOG, "dog")), DET_GT)["score"] == 3.0


def test_detection_weights_are_configurable():
    text = items((CAT, "cat"))
    r = compute_score("coco", text, json.dumps(DET_GT), {"task": "detection"}, missing_weight=0.0, f1_weight=0.0)
    assert r["score"] == pytest.approx(0.25 + 1 + 1)
    r2 = compute_score(
        "coco", text, json.dumps(DET_GT), {"task": "detection"}, detection={"missing_weight": 0.0, "f1_weight": 0.0}
    )
    assert r2 == r
    # As verl passes them: an OmegaConf mapping from reward.custom_reward_function.reward_kwargs.
    from omegaconf import OmegaConf

    r3 = compute_score(
        "coco",
        text,
        json.dumps(DET_GT),
        {"task": "detection"},
        **OmegaConf.create({"detection": {"missing_weight": 0.0, "f1_weight": 0.0}}),
    )
    assert r3 == r
    with pytest.raises(TypeError):
        compute_score("coco", text, json.dumps(DET_GT), {"task": "detection"}, f1_wieght=0.0)
    # Released script's weights: no missing penalty; max 3.
    assert max_score("detection", missing_weight=0.0) == 3.0


@pytest.mark.parametrize("name", COCO_80)
def test_every_coco_class_works(name):
    # Released: class index off by one; id 90 (toothbrush) raised IndexError -> 0.
    gt = {"objects": [{"bbox_2d": CAT, "label": name}], "frame": [100, 100], "categories": COCO_80}
    assert score("detection", items((CAT, name)), gt)["score"] == 3.0


def test_inverted_box_does_not_zero_the_completion():
    # Released: one inverted box asserted inside GIoU and the whole completion scored 0.
    r = score("detection", items((CAT, "cat"), ([40, 40, 20, 20], "dog")), DET_GT)
    assert r["format"] == 0.5 and r["precision"] == 0.5 and r["recall"] == 0.5 and r["label_accuracy"] == 1.0


def test_malformed_item_and_truncation_keep_the_rest():
    text = '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [20, 20, 40], "label": "dog"}]'
    r = score("detection", text, DET_GT)
    assert r["format"] == 0.5 and r["recall"] == 0.5 and r["score"] > 1.5
    full = items((CAT, "cat"), (DOG, "dog"))
    cut = score("detection", full[: full.rindex(str(DOG[2]))], DET_GT)  # inside the second box
    assert cut["format"] == 0.0 and cut["recall"] == 0.5 and cut["label_accuracy"] == 1.0
    # Cut inside the second label: its box is complete and localises, its label is lost.
    cut = score("detection", full[:-10], DET_GT)
    assert cut["format"] == 0.0 and cut["recall"] == 1.0 and cut["label_accuracy"] == 0.5


def test_repeats_and_spam_never_pay():
    exact = items((CAT, "cat"), (DOG, "dog"))
    best = score("detection", exact, DET_GT)["score"]
    repeated = score("detection", items((CAT, "cat"), (DOG, "dog"), (CAT, "cat"), (CAT, "dog")), DET_GT)
    assert repeated["score"] < best and repeated["label_accuracy"] == 1.0  # first label of a repeat wins
    rng = np.random.default_rng(0)
    junk = [((rng.integers(50, 80, 2).tolist() + rng.integers(81, 99, 2).tolist()), "bird") for _ in range(30)]
    assert score("detection", items((CAT, "cat"), (DOG, "dog"), *junk), DET_GT)["score"] < best - 1


def test_unknown_labels_localise_but_are_never_right():
    r = score("detection", items((CAT, "kitty"), (DOG, "Dog ")), DET_GT)
    assert r["recall"] == 1.0 and r["label_accuracy"] == 0.5 and r["unknown_labels"] == 0.5


def test_image_without_objects():
    gt = {"objects": [], "frame": [100, 100], "categories": ["cat"]}
    assert score("detection", "[]", gt)["score"] == 3.0
    assert score("detection", items((CAT, "cat")), gt)["score"] < 1.0
    assert score("detection", "no objects", gt)["score"] == 0.0


def test_qwen2_box_tokens_detection():
    text = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(0,0),(10,10)<|box_end|><|object_ref_start|>dog<|object_ref_end|><|box_start|>(20,20),(40,40)<|box_end|>"
    assert score("detection", text, DET_GT, model_family="qwen2_vl")["score"] == 3.0


# ---------------------------------------------------------------- contract


def test_task_resolution_and_bad_ground_truth():
    assert task_of("refcocog_val") == "grounding" and task_of("coco2017") == "detection"
    assert task_of("pixmo") == "counting" and task_of("pageocr") == "ocr"
    with pytest.raises(ValueError, match="cannot tell the task"):
        compute_score("mystery", "[]", "{}")
    with pytest.raises(ValueError, match="bad detection ground truth"):
        compute_score("coco", "[]", '{"objects": [{"bbox_2d": [1, 2]}]}')
    with pytest.raises(ValueError, match="bad grounding ground truth"):
        compute_score("refcoco", "[]", "not json")
    with pytest.raises(ValueError, match="unknown perception task"):
        compute_score("x", "[]", "{}", {"task": "segmentation"})


def test_results_are_plain_floats():
    r = score("detection", items((CAT, "cat")), DET_GT)
    assert all(type(v) is float for v in r.values()), r
    for task, gt in [("grounding", GT_BOX), ("counting", COUNT_GT), ("ocr", {"text": "x"})]:
        assert all(type(v) is float for v in score(task, "[1, 2, 3, 4]", gt).values())


def test_reward_objects_are_usable_alone():
    reward = get_reward("grounding", iou_shape="iou_squared")
    truth = reward.prepare({"bbox_2d": [0, 0, 10, 10]})
    assert reward("[0, 0, 10, 5]", truth)["score"] == 1.25


@pytest.mark.parametrize(
    "task, gt", [("grounding", GT_BOX), ("counting", COUNT_GT), ("ocr", {"text": "x"}), ("detection", DET_GT)]
)
def test_declared_components_are_what_the_reward_returns(task, gt):
    # The reward manager logs a fixed key set built from these declarations.
    from perception_r1_verl.rewards import REWARDS, component_keys

    for completion in ["", "[0, 0, 10, 10]", items((CAT, "cat"))]:
        result = score(task, completion, gt)
        assert tuple(result) == ("score", *REWARDS[task].components)
        assert set(result) <= set(component_keys())


# ---------------------------------------------------------------- one label rule, reward and evaluation

_CORPUS = Path(__file__).parent / "data" / "real_outputs" / "cases.jsonl"
_CORPUS_LABELS = sorted(
    {
        label
        for line in _CORPUS.read_text(encoding="utf-8").splitlines()
        if line.strip()
        for label in json.loads(line)["reading"]["labels"]
        if label is not None
    }
)
# Synthetic variants of a category name: the ones the rule forgives and the ones it does not.
_VARIANTS = [
    "traffic light",
    " Traffic  light",
    "TRAFFIC\tLIGHT",
    "traffic_light",
    "traffic lights",
    "ＴＲＡＦＦＩＣ light",
    "Straße",
    "STRASSE",
    "cat",
    "Cat\n",
    "cats",
    "",
    "猫",
    " 猫 ",
]


def _eval_category(label, category: str):
    """The category id the COCO evaluation gives a predicted ``label`` (None: unknown)."""
    from perception_r1_verl.eval.dataset import Sample
    from perception_r1_verl.eval.detection import detections_of, from_split
    from perception_r1_verl.parsing import parse_answer

    truth = {"objects": [{"bbox_2d": CAT, "label": category}], "frame": [100, 100], "categories": [category]}
    sample = Sample(
        0,
        "0",
        "detection",
        "coco",
        truth,
        {"image_size": [100, 100], "model_family": "qwen2_5_vl", "input_size": [100, 100]},
    )
    gt = from_split([sample])
    dets, _ = detections_of(sample, parse_answer(items((CAT, label))), gt)
    return dets[0]["category_id"] if dets else None


@pytest.mark.parametrize("category", ["traffic light", "strasse", "猫", "cat"])
def test_reward_and_evaluation_agree_on_every_label(category):
    """Issue 9: the reward called "traffic  light" right where the evaluation called it unknown."""
    gt = {"objects": [{"bbox_2d": CAT, "label": category}], "frame": [100, 100], "categories": [category]}
    agreed = 0
    for label in _CORPUS_LABELS + _VARIANTS + [category]:
        reward_right = score("detection", items((CAT, label)), gt)["label_accuracy"] == 1.0
        assert reward_right == (_eval_category(label, category) is not None), (label, category)
        agreed += reward_right
    assert agreed >= 2  # the category itself and at least one variant of it


@pytest.mark.parametrize(
    "completion",
    [
        "<|box_start|>(555,55555555555)<|box_end|>",  # what the miniature's GRPO converged to before the fix
        '[{"point_2d": [5, 5]}]',
    ],
)
def test_a_point_answer_to_a_grounding_prompt_earns_no_format_reward(completion):
    gt = json.dumps({"bbox_2d": [100, 100, 300, 300], "frame": [1000, 1000]})
    scored = compute_score("refcoco", completion, gt, {"task": "grounding", "model_family": "qwen2_vl"})
    assert scored["format"] == 0.0 and scored["score"] == 0.0
