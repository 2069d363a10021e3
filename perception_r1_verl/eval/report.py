"""A self-contained HTML page of the best and worst cases of a scored split.

Cases are ranked by each sample's ``score`` in ``samples.jsonl`` (IoU for grounding, minus
the count error for counting, 1 - edit distance for OCR, F1 at IoU 0.5 per image for
detection), ties broken by index. Each case shows its image (from the parquet) with the
ground truth in green and the prediction in red, both in original pixels; OCR cases show
a word (English) or character (Chinese) diff of the prediction against the reference:
struck-through red is missing from the prediction, green is extra.
"""

from __future__ import annotations

import base64
import difflib
import html
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageDraw

from ..frames import row_frame, to_pixels
from ..parsing import parse_answer
from .dataset import read_images
from .ocr import language
from .score import format_value, metric_names

GT_COLOR, PRED_COLOR = (0, 200, 0), (230, 0, 0)
THUMB = 640  # longest side of the drawn image, pixels

_CSS = """
body{font-family:sans-serif;margin:1em}h2{margin-top:1.5em}
.grid{display:flex;flex-wrap:wrap;gap:12px}.case{border:1px solid #ccc;padding:6px;max-width:660px}
.case img{max-width:640px;display:block}.meta{font-size:13px;color:#333;margin:4px 0}
.diff{font-family:monospace;font-size:12px;white-space:pre-wrap;max-height:320px;overflow:auto}
del{background:#fdd;color:#a00}ins{background:#dfd;color:#060;text-decoration:none}
.legend span{padding:0 6px}
"""


def _draw_boxes(draw, boxes, color, width, labels=None, bottom=False):
    """Boxes with their labels inside the top-left corner (bottom-left when ``bottom``)."""
    for i, box in enumerate(boxes):
        draw.rectangle(box, outline=color, width=width)
        if labels and labels[i]:
            y = box[3] - width - 12 if bottom else box[1] + width
            draw.text((box[0] + width, y), str(labels[i]), fill=color)


def _draw_points(draw, points, color, radius):
    for x, y in points:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=color, width=max(1, radius // 2))


def draw_case(image: Image.Image, sample, record: dict, response: str, scored) -> Image.Image:
    """``image`` with the ground truth (green) and the prediction (red) of one case."""
    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    gt = sample.ground_truth
    if scored.task in ("grounding", "counting"):
        frame = row_frame(gt, sample.extra_info)

        def to_image(coords):
            return to_pixels(coords, frame, image.size)

    if scored.task == "grounding":
        _draw_boxes(draw, [to_image(gt["bbox_2d"])], GT_COLOR, width)
        if record.get("pred_box"):
            _draw_boxes(draw, [to_image(record["pred_box"])], PRED_COLOR, width)
    elif scored.task == "counting":
        answer = parse_answer(response, think=sample.think)
        _draw_points(draw, [to_image(p) for p in gt.get("points") or []], GT_COLOR, 2 * width)
        _draw_boxes(draw, [to_image(b) for b in answer.boxes.tolist()], PRED_COLOR, width)
        _draw_points(draw, [to_image(p) for p in answer.points.tolist()], PRED_COLOR, 3 * width)
    elif scored.task == "detection":
        coco = scored.ground_truth.coco
        names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
        info = sample.extra_info
        sx, sy = image.size[0] / info["image_size"][0], image.size[1] / info["image_size"][1]

        def xyxy(b):
            return [b[0] * sx, b[1] * sy, (b[0] + b[2]) * sx, (b[1] + b[3]) * sy]

        anns = coco.imgToAnns.get(record["image_id"], [])
        _draw_boxes(draw, [xyxy(a["bbox"]) for a in anns], GT_COLOR, width, [names[a["category_id"]] for a in anns])
        dets = [d for d in scored.detections if d["image_id"] == record["image_id"]]
        _draw_boxes(
            draw,
            [xyxy(d["bbox"]) for d in dets],
            PRED_COLOR,
            width,
            [f"{names[d['category_id']]} {d['score']:.2f}" for d in dets],
            bottom=True,
        )
    image.thumbnail((THUMB, THUMB))
    return image


def text_diff(pred: str, reference: str) -> str:
    """HTML diff of ``pred`` against ``reference`` by words (English) or characters (Chinese).

    >>> text_diff("the cat sat", "the dog sat")
    'the <del>dog</del> <ins>cat</ins> sat'
    """
    by_char = language(reference) == "zh"
    a = list(reference) if by_char else reference.split()
    b = list(pred) if by_char else pred.split()
    sep = "" if by_char else " "
    parts = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            parts.append(html.escape(sep.join(a[i1:i2])))
            continue
        if i2 > i1:
            parts.append(f"<del>{html.escape(sep.join(a[i1:i2]))}</del>")
        if j2 > j1:
            parts.append(f"<ins>{html.escape(sep.join(b[j1:j2]))}</ins>")
    return sep.join(parts)


def _img_tag(image: Image.Image) -> str:
    buf = BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _meta(task: str, record: dict) -> str:
    keys = {
        "grounding": ("iou", "center_hit"),
        "counting": ("pred_count", "gt_count"),
        "ocr": ("edit_distance", "F1", "BLEU"),
        "detection": ("tp", "fp", "fn", "n_pred"),
    }[task]
    fields = [f"index {record['index']}", f"score {record['score']:.3f}"]
    fields += [f"{k} {record[k]:.3f}" if isinstance(record[k], float) else f"{k} {record[k]}" for k in keys]
    return html.escape(" | ".join(fields))


def _case_html(sample, record, response, images, scored) -> str:
    parts = [f'<div class="case"><div class="meta">{_meta(scored.task, record)}</div>']
    cell = images.get(sample.row) or []
    if cell and cell[0].get("bytes"):
        image = Image.open(BytesIO(cell[0]["bytes"]))
        parts.append(_img_tag(draw_case(image, sample, record, response, scored)))
    if scored.task == "ocr":
        parts.append(f'<div class="diff">{text_diff(record["pred_text"], sample.ground_truth["text"])}</div>')
    elif scored.task != "detection":
        parts.append(f'<div class="meta">response: {html.escape(response[:300])}</div>')
    return "".join(parts) + "</div>"


def write_report(out_dir, data, samples, scored, responses: dict | None = None, top_k: int = 8) -> Path:
    """Write ``out_dir/report.html`` with the ``top_k`` best and worst cases; returns its path."""
    responses = responses or {}
    scores = [r["score"] for r in scored.records]
    worst = sorted(range(len(samples)), key=lambda i: (scores[i], samples[i].index))[:top_k]
    best = sorted(range(len(samples)), key=lambda i: (-scores[i], samples[i].index))[:top_k]
    images = read_images(data, {samples[i].row for i in worst + best})
    legend = (
        '<p class="legend"><span style="color:#0a0">ground truth</span><span style="color:#e00">prediction</span></p>'
    )
    values = ", ".join(f"{n} {format_value(n, scored.metrics[n])}" for n in metric_names(scored.metrics))
    body = [
        f"<h1>{html.escape(scored.task)}: {html.escape(Path(data).name)}</h1>",
        f"<p>{scored.metrics['n_samples']} samples: {html.escape(values)} (% except MAE)</p>",
        legend,
    ]
    for title, picks in (("Best", best), ("Worst", worst)):
        body.append(f"<h2>{title} {len(picks)}</h2><div class='grid'>")
        for i in picks:
            body.append(_case_html(samples[i], scored.records[i], responses.get(samples[i].index, ""), images, scored))
        body.append("</div>")
    path = Path(out_dir) / "report.html"
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>"
    )
    return path
