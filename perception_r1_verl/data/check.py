"""Check a produced parquet the way training will read it (``perception-r1-prep check``).

For every row (or the first ``max_rows``): load it through verl's ``RLHFDataset``, turn
its image with verl's own vision path and the model's processor, and check that

- the image the processor gets is ``extra_info.input_size`` and its patch grid matches;
- that image shows the stored pixels as they are meant (:func:`rendering_error`: verl's
  loader turns a 16-bit grey PNG white and drops transparency other than RGBA);
- the prompt holds exactly as many image tokens as that grid needs;
- the ground truth, written as the model would answer it
  (:func:`perception_r1_verl.rewards.render_answer`), scores the reward's maximum.

Then draw ``n_draw`` rows with their ground truth into a PNG grid.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
import orjson
from PIL import Image, ImageDraw

from perception_r1_verl import frames
from perception_r1_verl.data.images import model_rgb
from perception_r1_verl.data.qwen_vl import import_qwen_vl_utils, load_processor

_CELL = 320  # thumbnail width in the grid
_COLOURS = ("#ff3b30", "#34c759", "#007aff", "#ffcc00", "#af52de", "#ff9500", "#5ac8fa")
_SCORE_TOL = 1e-6
_PIXEL_TOL = 2.0  # mean of 255: resampling the same pixels the same way differs by rounding only


@dataclass
class Report:
    rows: int = 0
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    grid: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def inspect_parquet(
    parquet: Path,
    processor_path: Path,
    *,
    max_rows: int | None = None,
    n_draw: int = 16,
    grid: Path | None = None,
    reward_kwargs: dict | None = None,
) -> Report:
    """Run the checks on ``parquet`` with the processor in ``processor_path``."""
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from perception_r1_verl.rewards import compute_score, max_score, render_answer

    import_qwen_vl_utils()  # verl imports it lazily; make that work without torchvision
    processor = load_processor(processor_path)
    with tempfile.TemporaryDirectory() as cache:
        config = OmegaConf.create({"max_prompt_length": 1 << 20, "filter_overlong_prompts": False, "cache_dir": cache})
        dataset = RLHFDataset(str(parquet), processor.tokenizer, config, processor)
    report = Report(rows=len(dataset))
    n = len(dataset) if max_rows is None else min(max_rows, len(dataset))
    drawn = []
    for i in range(n):
        row = dataset[i]
        where = f"row {i} ({row['data_source']} {row['extra_info']['source_id']})"
        image = _check_vision(row, dataset, config, processor, where, report)
        if image is not None:
            _check_pixels(dataset.dataframe[i]["images"][0]["bytes"], image, where, report)
        gt_text = row["reward_model"]["ground_truth"]
        gt, info = orjson.loads(gt_text), row["extra_info"]
        try:
            answer = render_answer(info["task"], gt, info["model_family"], think=info["think"])
        except (KeyError, TypeError, ValueError) as e:
            report.problems.append(f"{where}: ground truth does not fit task {info['task']!r}: {e!r}")
        else:
            kwargs = reward_kwargs or {}
            try:
                score = compute_score(row["data_source"], answer, gt_text, info, **kwargs)["score"]
            except ValueError as e:  # the reward refuses this ground truth
                report.problems.append(f"{where}: {e}")
            else:
                best = max_score(info["task"], **kwargs)
                if abs(score - best) > _SCORE_TOL:
                    report.problems.append(f"{where}: ground truth as an answer scores {score}, maximum {best}")
        report.checked += 1
        if len(drawn) < n_draw and image is not None:
            try:
                drawn.append(draw_row(image, gt, info))
            except ValueError as e:  # no answer frame: its boxes have no place in the image
                report.problems.append(f"{where}: {e}")
    if grid is not None and drawn:
        tile(drawn).save(grid)
        report.grid = str(grid)
    return report


def _check_vision(row, dataset, config, processor, where: str, report: Report):
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    messages = row["raw_prompt"]
    images, _, _ = type(dataset)._process_multi_modal_info(messages, dataset.image_patch_size, config)
    if not images or len(images) != 1:
        report.problems.append(f"{where}: expected one image, got {len(images or [])}")
        return None
    expected = tuple(row["extra_info"]["input_size"])
    if images[0].size != expected:
        report.problems.append(f"{where}: verl feeds the image at {images[0].size}, extra_info says {expected}")
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = build_multimodal_processor_inputs(processor, text=[text], images=images)
    _, gh, gw = (int(v) for v in inputs["image_grid_thw"][0])
    patch, merge = processor.image_processor.patch_size, processor.image_processor.merge_size
    if (gw * patch, gh * patch) != expected:
        report.problems.append(f"{where}: processor grid {gw}x{gh} patches of {patch} != input size {expected}")
    n_tokens = int((inputs["input_ids"][0] == processor.image_token_id).sum())
    if n_tokens != gh * gw // merge**2:
        report.problems.append(f"{where}: {n_tokens} image tokens for a {gw}x{gh} grid (merge {merge})")
    return images[0]


def rendering_error(stored: bytes, seen: Image.Image) -> float:
    """Mean absolute difference (of 255) between ``seen``, the image verl feeds the model,
    and the ``stored`` image as its pixels mean (:func:`~perception_r1_verl.data.images.model_rgb`)
    at the same size: about 0 unless verl's loader renders the stored mode wrong.

    >>> import numpy as np
    >>> png = BytesIO(); Image.fromarray(np.full((4, 4), 32896, np.uint16)).save(png, "PNG")  # 16-bit mid-grey
    >>> rendering_error(png.getvalue(), Image.new("RGB", (2, 2), (255, 255, 255)))  # what verl showed
    127.0
    """
    with Image.open(BytesIO(stored)) as im:
        meant = model_rgb(im).resize(seen.size)
    return float(np.abs(np.asarray(meant, np.int16) - np.asarray(seen.convert("RGB"), np.int16)).mean())


def _check_pixels(stored: bytes, seen: Image.Image, where: str, report: Report) -> None:
    try:
        error = rendering_error(stored, seen)
    except ValueError as e:  # 32-bit or float pixels: no rendering is right
        report.problems.append(f"{where}: the stored image cannot be shown as it is meant: {e}")
        return
    if error > _PIXEL_TOL:
        report.problems.append(
            f"{where}: verl shows the stored image {error:.0f}/255 off its pixels on average "
            "(a mode its loader renders wrong: convert the split again)"
        )


def draw_row(image: Image.Image, gt: dict, info: dict) -> Image.Image:
    """The model's input image with the ground truth drawn in it, captioned with the task."""
    im = image.convert("RGB")
    draw = ImageDraw.Draw(im)
    frame = frames.row_frame(gt, info)
    size = im.size
    objects = [{"bbox_2d": gt["bbox_2d"]}] if "bbox_2d" in gt else gt.get("objects", [])
    for k, obj in enumerate(objects):
        box = frames.to_pixels(obj["bbox_2d"], frame, size)
        draw.rectangle(box, outline=_COLOURS[k % len(_COLOURS)], width=max(2, size[0] // 200))
        if obj.get("label"):
            draw.text((box[0] + 3, box[1] + 2), obj["label"], fill=_COLOURS[k % len(_COLOURS)])
    for x, y in gt.get("points", []):
        x, y = frames.to_pixels([x, y], frame, size)
        r = max(3, size[0] // 120)
        draw.ellipse((x - r, y - r, x + r, y + r), outline="#ff3b30", width=2)
    caption = f"{info['task']} {info['source_id']}" + (f": {gt['text'][:60]!r}" if "text" in gt else "")
    thumb = im.resize((_CELL, max(1, round(_CELL * size[1] / size[0]))))
    out = Image.new("RGB", (_CELL, thumb.height + 16), "white")
    out.paste(thumb, (0, 16))
    ImageDraw.Draw(out).text((2, 2), caption, fill="black")
    return out


def tile(cells: list[Image.Image], columns: int = 4) -> Image.Image:
    """Cells (all ``_CELL`` wide) in a grid, rows as high as their tallest cell."""
    rows = [cells[i : i + columns] for i in range(0, len(cells), columns)]
    heights = [max(c.height for c in r) for r in rows]
    out = Image.new("RGB", (_CELL * min(columns, len(cells)), sum(heights)), "white")
    y = 0
    for r, h in zip(rows, heights):
        for j, c in enumerate(r):
            out.paste(c, (j * _CELL, y))
        y += h
    return out
