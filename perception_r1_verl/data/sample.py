"""A small COCO-format detection set drawn offline, for smoke runs and benchmarks.

Coloured squares, circles and triangles on a noisy background; the boxes are exact
because the shapes are drawn from them. Deterministic for a given seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("square", "circle", "triangle")


@dataclass(frozen=True)
class SampleDataset:
    annotations: Path  # instances json
    images: Path  # folder the file names are relative to


def make_sample_coco(
    root: Path,
    n_images: int = 32,
    seed: int = 0,
    min_side: int = 160,
    max_side: int = 480,
    max_objects: int = 4,
) -> SampleDataset:
    """Write ``root/images/*.jpg`` and ``root/instances.json``; every image has 1..max_objects shapes.

    >>> import tempfile
    >>> s = make_sample_coco(Path(tempfile.mkdtemp()), n_images=2)
    >>> sorted(json.loads(s.annotations.read_text()))
    ['annotations', 'categories', 'images']
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        pixels = rng.integers(90, 150, size=(h, w, 3), dtype=np.uint8)
        im = Image.fromarray(pixels)
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, max_objects + 1))):
            cat = int(rng.integers(len(SHAPES)))
            side = int(rng.integers(max(8, min(w, h) // 8), max(9, min(w, h) // 2)))
            x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
            _draw(draw, SHAPES[cat], (x, y, x + side, y + side), tuple(int(c) for c in rng.integers(0, 256, 3)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat + 1,
                    "bbox": [x, y, side, side],
                    "area": side * side,
                    "iscrowd": 0,
                }
            )
        name = f"{image_id:06d}.jpg"
        im.save(root / "images" / name, quality=90)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return SampleDataset(path, root / "images")


def _draw(draw: ImageDraw.ImageDraw, shape: str, box, colour) -> None:
    x1, y1, x2, y2 = box
    if shape == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=colour)
    elif shape == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=colour)
    else:
        draw.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2) // 2, y1)], fill=colour)
