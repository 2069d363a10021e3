"""Coordinate frames of the Qwen-VL families.

Each family answers boxes in its own frame (its record's ``answer_frame``,
:mod:`perception_r1_verl.families`), and ground truth must be written in that frame or
the reward is silently capped: ``"pixels"`` of the image the model was fed, i.e. after
``smart_resize`` with the family's ``resize_factor`` (Qwen2.5-VL: 28, patch 14 and a 2x2
merge), or ``"relative"`` 0-1000 coordinates whatever the image size (Qwen2-VL, Qwen3-VL, Qwen3.5).

Sizes are ``(width, height)`` throughout, as PIL and the answer boxes use them.
"""

from __future__ import annotations

import math

from perception_r1_verl.families import family

RELATIVE_SCALE = 1000  # the "relative" answer frame: [0, 1000]
# Bound for coordinates when a row names no frame: keeps areas and distances finite.
COORD_LIMIT = 1_000_000
# The paper's and verl's pixel bounds (verl passes them to qwen_vl_utils.fetch_image).
DEFAULT_MIN_PIXELS = 3136
DEFAULT_MAX_PIXELS = 1_000_000
_MAX_ASPECT = 200  # the processors refuse more extreme aspect ratios


def smart_resize(
    width: int,
    height: int,
    factor: int = 28,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """The Qwen-VL processors' resize rule, as ``(width, height)``.

    Both sides become multiples of ``factor`` and the area is brought inside
    ``[min_pixels, max_pixels]`` keeping the aspect ratio (``qwen_vl_utils.smart_resize``
    is the oracle in the tests; note its argument order is height, width).

    >>> smart_resize(640, 480)
    (644, 476)
    >>> smart_resize(4000, 3000)
    (1148, 840)
    """
    if min(width, height) <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max(width, height) / min(width, height) > _MAX_ASPECT:
        raise ValueError(f"aspect ratio of {width}x{height} exceeds {_MAX_ASPECT}")
    w_bar = max(factor, round(width / factor) * factor)
    h_bar = max(factor, round(height / factor) * factor)
    if w_bar * h_bar > max_pixels:
        beta = math.sqrt(width * height / max_pixels)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
    elif w_bar * h_bar < min_pixels:
        beta = math.sqrt(min_pixels / (width * height))
        w_bar = math.ceil(width * beta / factor) * factor
        h_bar = math.ceil(height * beta / factor) * factor
    return w_bar, h_bar


def input_size(
    model_family: str,
    image_size: tuple[int, int],
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Size ``(width, height)`` of the image the model sees for an original ``image_size``."""
    return smart_resize(*image_size, family(model_family).resize_factor, min_pixels, max_pixels)


def answer_frame(model_family: str, input_wh: tuple[int, int]) -> tuple[int, int]:
    """Extent ``(width, height)`` of the coordinates the family answers in.

    >>> answer_frame("qwen2_5_vl", (644, 476))
    (644, 476)
    >>> answer_frame("qwen2_vl", (644, 476))
    (1000, 1000)
    """
    if family(model_family).answer_frame == "pixels":
        return tuple(input_wh)
    return (RELATIVE_SCALE, RELATIVE_SCALE)


def scale_box(box, src: tuple[float, float], dst: tuple[float, float]) -> list[float]:
    """Map ``[x1, y1, x2, y2]`` from a frame of size ``src`` to one of size ``dst``.

    >>> scale_box([10, 20, 30, 40], (100, 200), (1000, 1000))
    [100.0, 100.0, 300.0, 200.0]
    """
    sx, sy = dst[0] / src[0], dst[1] / src[1]
    x1, y1, x2, y2 = box
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


def frame_of(ground_truth: dict) -> tuple[float, float]:
    """The ground truth's ``frame`` as ``(width, height)``, else ``COORD_LIMIT`` square."""
    frame = ground_truth.get("frame")
    if not frame:
        return (COORD_LIMIT, COORD_LIMIT)
    width, height = (float(v) for v in frame)
    if not (0 < width <= COORD_LIMIT and 0 < height <= COORD_LIMIT):
        raise ValueError(f"frame must be a positive [width, height], got {frame!r}")
    return (width, height)


def clip_box(box, frame: tuple[float, float]) -> list[float]:
    """Clip ``[x1, y1, x2, y2]`` to ``[0, W] x [0, H]``.

    >>> clip_box([-5, 10, 120, 50], (100, 100))
    [0, 10, 100, 50]
    """
    w, h = frame
    x1, y1, x2, y2 = box
    return [min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)]


def row_frame(ground_truth: dict, extra_info: dict) -> tuple[float, float]:
    """The answer frame of a data row, ``(width, height)``.

    The ground truth's ``frame`` (every converter writes it), else the model family's
    frame of ``extra_info["input_size"]``. A row with neither, or whose two disagree, is
    an error: its boxes cannot be placed in the image.

    >>> row_frame({"frame": [644, 476]}, {})
    (644.0, 476.0)
    >>> row_frame({}, {"model_family": "qwen2_vl", "input_size": [644, 476]})
    (1000.0, 1000.0)
    >>> row_frame({}, {"model_family": "qwen2_5_vl"})
    Traceback (most recent call last):
    ...
    ValueError: row has no answer frame: its ground truth has no 'frame' and its extra_info no model_family and input_size
    """
    frame = ground_truth.get("frame")
    family, size = extra_info.get("model_family"), extra_info.get("input_size")
    implied = tuple(float(v) for v in answer_frame(family, tuple(size))) if family and size else None
    if frame:
        frame = (float(frame[0]), float(frame[1]))
        if implied is not None and implied != frame:
            raise ValueError(
                f"row's ground truth frame {list(frame)} is not the {family} frame of input size {list(size)}: {list(implied)}"
            )
        return frame
    if implied is None:
        raise ValueError(
            "row has no answer frame: its ground truth has no 'frame' and its extra_info no model_family and input_size"
        )
    return implied


def to_pixels(coords, frame: tuple[float, float], size: tuple[float, float]) -> list[float]:
    """A box ``[x1, y1, x2, y2]`` or point ``[x, y]`` of the answer ``frame`` in pixels of an
    image of ``size`` (the original, or any resized copy), clipped to that image.

    >>> to_pixels([100, 100, 300, 1200], (1000, 1000), (640, 480))
    [64.0, 48.0, 192.0, 480]
    >>> to_pixels([500, 500], (1000, 1000), (640, 480))
    [320.0, 240.0]
    """
    if len(coords) == 2:
        return clip_box(scale_box([*coords, *coords], frame, size), size)[:2]
    return clip_box(scale_box(coords, frame, size), size)
