"""Converter throughput and peak memory: 1k vs 5k generated COCO-like images.

    python bench/bench_convert.py            # 5,000 images (about 2 minutes on 2 cores)
    python bench/bench_convert.py --n 20000  # any size; the small run stays at --small

Each conversion runs in a fresh process that reports rows/s and how far its resident
memory rose above where it stood before converting (peak RSS growth). The baseline is the
same conversion collecting every row and writing one DataFrame at the end, the way
one-off scripts usually do it; its memory grows with the dataset, the streaming
writer's should not (ratio 5k/1k near 1).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(impl: str, annotations: Path, images: Path, out: Path, workers: int) -> dict:
    """One conversion in this process; returns rows, seconds and peak RSS growth (MiB)."""
    import psutil

    from perception_r1_verl.data.coco_det import convert_coco, detection_builder, load_coco
    from perception_r1_verl.data.images import load_image
    from perception_r1_verl.data.options import ConvertOptions
    from perception_r1_verl.data.rules import Stats

    options = ConvertOptions(progress=False, workers=workers)
    rss0 = psutil.Process().memory_info().rss
    start = time.perf_counter()
    if impl == "streaming":
        rows = convert_coco(annotations, images, out, options)["rows"]
    else:  # the same rows, collected in memory and written at once
        import pandas as pd

        stats = Stats()
        jobs, categories = load_coco(annotations, images, stats)
        builder = detection_builder(categories, options)
        collected = []
        for job in jobs:
            img = load_image(
                job.image, options.image_store, options.model_family, options.min_pixels, options.max_pixels
            )
            row = builder.row(job, img, len(collected), options, stats)
            if row is not None:
                collected.append(row)
        pd.DataFrame(collected).to_parquet(out)
        rows = len(collected)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"rows": rows, "seconds": seconds, "peak_growth_mib": max(0, peak - rss0) / 2**20}


def run_child(impl: str, annotations: Path, images: Path, out: Path, workers: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, str(annotations), str(images), str(out), str(workers)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000, help="images in the large run (default: 5000)")
    p.add_argument("--small", type=int, default=1000, help="images in the small run (default: 1000)")
    p.add_argument(
        "--workers", type=int, default=2, help="also time the streaming run with this many workers (0: skip)"
    )
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        impl, ann, img, out, workers = args.child
        print(json.dumps(child(impl, Path(ann), Path(img), Path(out), int(workers))))
        return

    from perception_r1_verl.data.sample import make_sample_coco

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        sample = make_sample_coco(tmp / "set", n_images=args.n, min_side=96, max_side=192, max_objects=3)
        print(f"generated {args.n} images in {time.perf_counter() - t0:.1f}s", flush=True)
        small = tmp / "small.json"
        coco = json.loads(sample.annotations.read_text())
        keep = {i["id"] for i in coco["images"][: args.small]}
        coco["images"] = coco["images"][: args.small]
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
        small.write_text(json.dumps(coco))

        results = {}
        runs = [
            ("streaming", args.small, small, 0),
            ("streaming", args.n, sample.annotations, 0),
            ("baseline", args.small, small, 0),
            ("baseline", args.n, sample.annotations, 0),
        ]
        if args.workers:
            runs.append(("streaming", args.n, sample.annotations, args.workers))
        print(f"{'converter':<22}{'images':>8}{'rows/s':>10}{'peak RSS growth MiB':>22}")
        for impl, n, ann, workers in runs:
            r = run_child(impl, ann, sample.images, tmp / f"{impl}-{n}-{workers}.parquet", workers)
            results[(impl, n, workers)] = r
            name = impl + (f" ({workers} workers)" if workers else "")
            print(f"{name:<22}{n:>8}{r['rows'] / r['seconds']:>10.0f}{r['peak_growth_mib']:>22.1f}", flush=True)

        def growth(impl):
            return results[(impl, args.n, 0)]["peak_growth_mib"] / max(
                results[(impl, args.small, 0)]["peak_growth_mib"], 1.0
            )

        def speed(key):
            return results[key]["rows"] / results[key]["seconds"]

        print(
            f"peak memory {args.n // 1000}k/{args.small // 1000}k: streaming x{growth('streaming'):.2f}, "
            f"baseline x{growth('baseline'):.2f}"
        )
        print(
            f"rows/s streaming / baseline at {args.n}: {speed(('streaming', args.n, 0)) / speed(('baseline', args.n, 0)):.2f}"
        )
        if args.workers:
            ratio = speed(("streaming", args.n, args.workers)) / speed(("streaming", args.n, 0))
            print(f"rows/s {args.workers} workers / inline at {args.n}: {ratio:.2f}")


if __name__ == "__main__":
    main()
