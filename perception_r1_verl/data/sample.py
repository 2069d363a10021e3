"""A small dataset drawn offline, for smoke runs, the recipes' CPU path and benchmarks.

Coloured squares, circles and triangles on a noisy background, as COCO-format detection;
the boxes are exact because the shapes are drawn from them. :func:`make_sample_sources`
derives every converter's input from it: referring expressions, counts, rendered pages.
Deterministic for a given seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("square", "circle", "triangle")
OCR_WORDS = "the quick brown fox jumps over a lazy dog while seven pale wizards quietly mix jam".split()


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


@dataclass(frozen=True)
class SampleSources:
    """The sample as each converter reads it; file names are relative to ``images``."""

    annotations: Path  # COCO instances json (perception-r1-prep coco_det --annotations)
    grounding: Path  # jsonl of image, expression, bbox (perception-r1-prep refcoco --jsonl)
    counting: Path  # jsonl of image, label, count, points (perception-r1-prep pixmo_count --table)
    ocr: Path  # jsonl of image, text, for rendered pages (perception-r1-prep page_ocr --jsonl)
    images: Path


def make_sample_sources(
    root: Path,
    n_images: int = 32,
    seed: int = 0,
    *,
    min_side: int = 160,
    max_side: int = 480,
    n_pages: int | None = None,
) -> SampleSources:
    """:func:`make_sample_coco` plus the inputs of the other converters, derived from it.

    Grounding refers to shapes alone of their kind in an image ("circle": the prompt adds
    the article), counting counts each kind of shape by its centres, OCR gets ``n_pages``
    (default ``n_images``) pages of three lines.

    >>> import tempfile
    >>> s = make_sample_sources(Path(tempfile.mkdtemp()), n_images=2)
    >>> sorted(json.loads(s.counting.read_text().splitlines()[0]))
    ['count', 'image', 'label', 'points']
    """
    root = Path(root)
    sample = make_sample_coco(root, n_images=n_images, seed=seed, min_side=min_side, max_side=max_side)
    coco = json.loads(sample.annotations.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    shapes: dict[tuple[str, str], list[list[float]]] = {}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        shapes.setdefault((files[ann["image_id"]], names[ann["category_id"]]), []).append([x, y, x + w, y + h])
    grounding = [
        {"image": f, "expression": name, "bbox": boxes[0]} for (f, name), boxes in shapes.items() if len(boxes) == 1
    ]
    counting = [
        {
            "image": f,
            "label": f"{name}s",
            "count": len(boxes),
            "points": [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in boxes],
        }
        for (f, name), boxes in shapes.items()
    ]
    pages = [_render_page(sample.images, i, seed) for i in range(n_images if n_pages is None else n_pages)]
    return SampleSources(
        sample.annotations,
        _write_jsonl(root / "refcoco.jsonl", grounding),
        _write_jsonl(root / "pixmo_count.jsonl", counting),
        _write_jsonl(root / "page_ocr.jsonl", pages),
        sample.images,
    )


def _write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _render_page(images: Path, i: int, seed: int) -> dict:
    """A white page with three lines of words in PIL's built-in font; returns its jsonl line."""
    rng = np.random.default_rng([seed, i])
    lines = [" ".join(rng.choice(OCR_WORDS, size=5)) for _ in range(3)]
    page = Image.new("RGB", (448, 168), "white")
    draw = ImageDraw.Draw(page)
    for row, line in enumerate(lines):
        draw.text((16, 16 + 48 * row), line, fill="black", font_size=24)
    name = f"page_{i:03d}.png"
    page.save(images / name)
    return {"image": name, "text": "\n".join(lines)}


def _draw(draw: ImageDraw.ImageDraw, shape: str, box, colour) -> None:
    x1, y1, x2, y2 = box
    if shape == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=colour)
    elif shape == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=colour)
    else:
        draw.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2) // 2, y1)], fill=colour)
