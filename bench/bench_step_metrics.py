"""Cost of the per-step signal metrics against the step metrics that existed before them.

Builds one paper-sized GRPO step of the four tasks (``--prompts`` prompts of ``--n``
rollouts, reward_extra_info columns as the manager writes them, JSON ground truths, a
response-length mask) and times, best of ``--repeat``:

- ``reward_metrics``: the per-source component means (what step_metrics logged before);
- ``step_signal``: the signal metrics (groups by uid, difficulty buckets, truncation),
  with the ground-truth bucket cache cleared each run (a step of new prompts: the worst case).

Prints both and their ratio. Run: ``python bench/bench_step_metrics.py [--prompts 128] [--n 8]``.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from perception_r1_verl.plugin import step_metrics

TRUTHS = {
    "refcoco": lambda r: {"bbox_2d": [r.randint(0, 400), r.randint(0, 400), r.randint(500, 999), 999]},
    "coco_det": lambda r: {"objects": [{"bbox_2d": [1, 1, 9, 9], "label": "dog"}] * r.randint(1, 20)},
    "pixmo_count": lambda r: {"count": r.randint(0, 30)},
    "page_ocr": lambda r: {"text": "x" * r.randint(10, 3000)},
}
COMPONENTS = {"refcoco": "iou", "coco_det": "f1", "pixmo_count": "count", "page_ocr": "edit_similarity"}


def step(prompts: int, n: int, seed: int = 0) -> tuple[dict, list, list, list, list]:
    """Columns, uids, sources, ground truths and truncation flags of one step."""
    r = random.Random(seed)
    sources = [list(TRUTHS)[p % len(TRUTHS)] for p in range(prompts) for _ in range(n)]
    truths = {p: json.dumps(TRUTHS[sources[p * n]](r)) for p in range(prompts)}
    rows = len(sources)
    columns = {key: [None] * rows for key in ("score", "format", *COMPONENTS.values(), *step_metrics.COUNTERS)}
    for i, source in enumerate(sources):
        value = r.choice([0.0, 0.0, r.random(), 1.0])
        columns["score"][i] = 2 * value
        columns["format"][i] = 1.0
        columns[COMPONENTS[source]][i] = value
        for key in step_metrics.COUNTERS:
            columns[key][i] = 0
    uids = [f"p{i // n}" for i in range(rows)]
    ground_truths = [{"ground_truth": truths[i // n]} for i in range(rows)]
    truncated = [r.random() < 0.05 for _ in range(rows)]
    return columns, uids, sources, ground_truths, truncated


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    columns, uids, sources, truths, truncated = step(args.prompts, args.n)

    def signal():
        step_metrics._task_and_bucket.cache_clear()
        step_metrics.step_signal(columns, uids, sources, truths, truncated)

    before = best(lambda: step_metrics.reward_metrics(columns, sources), args.repeat)
    added = best(signal, args.repeat)
    print(
        f"{len(uids)} rollouts ({args.prompts} prompts x {args.n}): reward_metrics {1000 * before:.2f} ms, "
        f"step_signal {1000 * added:.2f} ms (x{added / before:.2f} of the existing step-metrics cost)"
    )


if __name__ == "__main__":
    main()
