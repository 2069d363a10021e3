"""What the HTML reports draw with: ground truth in green, predictions in red."""

from __future__ import annotations

import base64
from io import BytesIO

from PIL import Image

GT_COLOR, PRED_COLOR = (0, 200, 0), (230, 0, 0)
THUMB = 640  # longest side of the drawn image, pixels


def draw_boxes(draw, boxes, color, width, labels=None, bottom=False):
    """Boxes with their labels inside the top-left corner (bottom-left when ``bottom``)."""
    for i, box in enumerate(boxes):
        draw.rectangle(box, outline=color, width=width)
        if labels and labels[i]:
            y = box[3] - width - 12 if bottom else box[1] + width
            draw.text((box[0] + width, y), str(labels[i]), fill=color)


def draw_points(draw, points, color, radius):
    for x, y in points:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=color, width=max(1, radius // 2))


def img_tag(image: Image.Image) -> str:
    """``image`` inlined as a JPEG ``<img>`` (the reports are single files)."""
    buf = BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">'
