"""Hand-made splits following the reward contract (docs/rewards.md), for the evaluation tests."""

from __future__ import annotations

import json
from io import BytesIO

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

PROMPTS = {
    "grounding": "Output the bounding box of the dog in the image.",
    "counting": "Output all the bounding boxes of the apple",
    "ocr": "OCR this image.",
    "detection": "Output the bounding boxes of every object of these categories: cat, dog.",
}


def png(size=(100, 100), mode="RGB") -> bytes:
    buf = BytesIO()
    Image.new(mode, size, (90, 120, 200, 128)[: len(mode)]).save(buf, "PNG")
    return buf.getvalue()


def make_split(path, task, gts, groups=None, think=None, family="qwen2_5_vl", extra=None):
    """One contract row per ground truth; image and frame 100x100 (so boxes are pixels).

    ``input_size`` agrees with the ground truth's frame as the converters write it: for
    Qwen2.5-VL the frame is the input size (``frames.row_frame`` refuses rows where they
    differ); otherwise 112x112, the resize of a 100x100 image. ``extra``: per row, fields
    that replace these in ``extra_info`` (other image sizes; None to drop one).
    """
    image = png()
    rows = []
    for i, gt in enumerate(gts):
        input_size = list(gt["frame"]) if family == "qwen2_5_vl" and gt.get("frame") else [112, 112]
        source, split = (groups or ["refcoco/val"] * len(gts))[i].split("/")
        rows.append(
            {
                "data_source": source,
                "prompt": [{"role": "user", "content": "<image>" + PROMPTS[task]}],
                "images": [{"bytes": image, "min_pixels": 3136, "max_pixels": 1_000_000}],
                "ability": task,
                "reward_model": {"style": "rule", "ground_truth": json.dumps(gt)},
                "extra_info": {
                    "task": task,
                    "index": i,
                    "split": split,
                    "source_id": f"img{i}",
                    "image_size": [100, 100],
                    "input_size": input_size,
                    "model_family": family,
                    "think": bool(think and think[i]),
                    **(extra[i] if extra else {}),
                },
            }
        )
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_responses(path, texts):
    with open(path, "w") as f:
        for i, text in enumerate(texts):
            if text is not None:
                f.write(json.dumps({"index": i, "response": text}) + "\n")
    return path
