"""Detection scoring overhead against pycocotools alone, on the same boxes, in one run.

Generates a reproducible COCO-like split (80 categories, about 7 objects per image, images
of 320-640 px answered by Qwen2.5-VL in its resized frame) with 20 predicted boxes per
image (jittered ground truth and random boxes, output-ordered), then times:

- ``pycocotools``: what a user would run by hand on the boxes we evaluate - ``COCO``
  on the annotation file, ``loadRes`` on the results list, ``evaluate``, ``accumulate``,
  ``summarize``;
- ``perception-r1-eval score``: the package end to end from the parquet split and the
  responses jsonl (reading, parsing every answer, mapping boxes to original pixels,
  the same pycocotools calls, per-image matching counts, writing metrics.json,
  metrics.md, samples.jsonl, detections.json); no HTML report.

The boxes pycocotools gets are read back from our ``detections.json``, and both runs
must give the same 12 numbers. Both are single-threaded: the ratio uses process CPU time
(best of ``--repeat`` alternating runs), which other jobs on a shared machine disturb far
less than wall time; wall times are printed too. Prints the overhead ratio
(ours - pycocotools) / pycocotools; the target is under 20 %.
Run: ``python bench/bench_eval.py [--images 5000] [--boxes 20] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from perception_r1_verl.eval.score import score
from perception_r1_verl.frames import input_size

N_CATEGORIES = 80


def synthetic(n_images: int, n_boxes: int, folder: Path, seed: int = 0):
    """Write ``instances.json``, ``split.parquet`` and ``responses.jsonl`` into ``folder``."""
    rng = np.random.default_rng(seed)
    names = [f"category {i}" for i in range(N_CATEGORIES)]
    images, anns, rows, responses = [], [], [], []
    for i in range(n_images):
        w, h = (int(v) for v in rng.integers(320, 641, 2))
        fw, fh = input_size("qwen2_5_vl", (w, h))
        images.append({"id": i + 1, "width": w, "height": h, "file_name": f"{i + 1:012d}.jpg"})
        objects = []
        for _ in range(int(rng.integers(1, 14))):
            x1, y1 = rng.uniform(0, w - 16), rng.uniform(0, h - 16)
            x2, y2 = rng.uniform(x1 + 8, w), rng.uniform(y1 + 8, h)
            cat = int(rng.integers(N_CATEGORIES))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": cat + 1,
                    "iscrowd": 0,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                }
            )
            box = [round(x1 * fw / w), round(y1 * fh / h), round(x2 * fw / w), round(y2 * fh / h)]
            objects.append({"bbox_2d": box, "label": names[cat]})
        preds = []
        for k in range(n_boxes):
            if k < len(objects) and rng.random() < 0.8:
                box = (np.array(objects[k]["bbox_2d"]) + rng.integers(-6, 7, 4)).tolist()
                label = objects[k]["label"]
            else:
                x, y = int(rng.integers(0, fw - 40)), int(rng.integers(0, fh - 40))
                box, label = (
                    [x, y, x + int(rng.integers(8, 40)), y + int(rng.integers(8, 40))],
                    names[int(rng.integers(80))],
                )
            preds.append(
                {
                    "bbox_2d": [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])],
                    "label": label,
                }
            )
        gt = {"objects": objects, "frame": [fw, fh], "categories": names}
        rows.append(
            {
                "data_source": "coco",
                "prompt": [{"role": "user", "content": "<image>Detect."}],
                "images": [{"bytes": b"", "min_pixels": 3136, "max_pixels": 1_000_000}],
                "ability": "detection",
                "reward_model": {"style": "rule", "ground_truth": json.dumps(gt)},
                "extra_info": {
                    "task": "detection",
                    "index": i,
                    "split": "val",
                    "source_id": str(i + 1),
                    "image_size": [w, h],
                    "input_size": [fw, fh],
                    "model_family": "qwen2_5_vl",
                    "think": False,
                },
            }
        )
        responses.append({"index": i, "response": "```json\n" + json.dumps(preds) + "\n```"})
    dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
    }
    (folder / "instances.json").write_bytes(orjson.dumps(dataset))
    pq.write_table(pa.Table.from_pylist(rows), folder / "split.parquet")
    (folder / "responses.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in responses))
    return len(anns)


def pycocotools_alone(annotations: Path, detections: list[dict]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        e = COCOeval(gt, gt.loadRes(detections), "bbox")
        e.params.imgIds = sorted(gt.getImgIds())
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--boxes", type=int, default=20, help="predicted boxes per image")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs of each; the best counts")
    args = parser.parse_args()
    cpu = {"ours": [], "pycocotools": []}
    wall = {"ours": [], "pycocotools": []}

    def timed(name, fn):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        cpu[name].append(time.process_time() - c)
        wall[name].append(time.perf_counter() - w)
        return out

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n_gt = synthetic(args.images, args.boxes, folder)
        print(f"{args.images} images, {n_gt} ground-truth objects, {args.images * args.boxes} predicted boxes")
        for _ in range(args.repeat):
            ours = timed(
                "ours",
                lambda: score(
                    folder / "split.parquet",
                    folder / "responses.jsonl",
                    folder / "out",
                    annotations=folder / "instances.json",
                    report=False,
                ),
            )
            detections = orjson.loads((folder / "out" / "detections.json").read_bytes())
            stats = timed("pycocotools", lambda d=detections: pycocotools_alone(folder / "instances.json", d))

    names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    mine = np.array([-1.0 if ours[k] is None else ours[k] for k in names])
    if not np.allclose(mine, stats, rtol=0, atol=1e-12):
        raise SystemExit(f"metrics differ: ours {mine} vs pycocotools {stats}")
    print(f"AP {ours['AP']:.4f} AP50 {ours['AP50']:.4f} (equal to pycocotools on the same boxes)")
    t_ours, t_coco = min(cpu["ours"]), min(cpu["pycocotools"])
    print(f"pycocotools alone:         {t_coco:7.2f} s CPU ({min(wall['pycocotools']):.2f} s wall)")
    print(f"perception-r1-eval score:  {t_ours:7.2f} s CPU ({min(wall['ours']):.2f} s wall)")
    print(f"overhead ratio: {(t_ours - t_coco) / t_coco:.1%} of the pycocotools time (target < 20%)")


if __name__ == "__main__":
    main()
