"""A self-contained HTML page of the best and worst cases of a scored split.

Cases are ranked by each sample's ``score`` in ``samples.jsonl`` (IoU for grounding, minus
the count error for counting, 1 - edit distance for OCR, F1 at IoU 0.5 per image for
detection), ties broken by index. Each case shows its image (from the parquet) with the
ground truth in green and the prediction in red, both in original pixels; OCR cases show
a word (English) or character (Chinese) diff of the prediction against the reference:
struck-through red is missing from the prediction, green is extra.
"""

from __future__ import annotations

import html
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageDraw

from .dataset import read_images
from .drawing import THUMB, img_tag
from .metric import format_value, metric_names
from .metrics import get_metric

CSS = """
body{font-family:sans-serif;margin:1em}h2{margin-top:1.5em}
.grid{display:flex;flex-wrap:wrap;gap:12px}.case{border:1px solid #ccc;padding:6px;max-width:660px}
.case img{max-width:640px;display:block}.meta{font-size:13px;color:#333;margin:4px 0}
.diff{font-family:monospace;font-size:12px;white-space:pre-wrap;max-height:320px;overflow:auto}
del{background:#fdd;color:#a00}ins{background:#dfd;color:#060;text-decoration:none}
.legend span{padding:0 6px}
"""


def draw_case(image: Image.Image, sample, record: dict, response: str, scored) -> Image.Image:
    """``image`` with the ground truth (green) and the prediction (red) of one case, as
    the task's metric draws them."""
    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    get_metric(scored.task).draw_case(draw, image.size, sample, record, response, scored, width)
    image.thumbnail((THUMB, THUMB))
    return image


def _meta(task: str, record: dict) -> str:
    fields = [f"index {record['index']}", f"score {record['score']:.3f}"]
    fields += [
        f"{k} {record[k]:.3f}" if isinstance(record[k], float) else f"{k} {record[k]}"
        for k in get_metric(task).case_fields
    ]
    if record.get("finish_reason") == "length":
        fields.append("CUT AT max_new_tokens")
    return html.escape(" | ".join(fields))


def _case_html(sample, record, response, images, scored) -> str:
    parts = [f'<div class="case"><div class="meta">{_meta(scored.task, record)}</div>']
    cell = images.get(sample.row) or []
    if cell and cell[0].get("bytes"):
        image = Image.open(BytesIO(cell[0]["bytes"]))
        parts.append(img_tag(draw_case(image, sample, record, response, scored)))
    parts.append(get_metric(scored.task).case_note(sample, record, response))
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
        f"<p>{scored.metrics['n_samples']} samples: {html.escape(values)} (% except MAE); "
        f"{scored.metrics.get('n_hit_length', 0)} answers cut at max_new_tokens (marked)</p>",
        legend,
    ]
    for title, picks in (("Best", best), ("Worst", worst)):
        body.append(f"<h2>{title} {len(picks)}</h2><div class='grid'>")
        for i in picks:
            body.append(_case_html(samples[i], scored.records[i], responses.get(samples[i].index, ""), images, scored))
        body.append("</div>")
    path = Path(out_dir) / "report.html"
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><style>{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>"
    )
    return path
