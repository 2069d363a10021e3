"""Reading one image as a converter stores it: fully decoded, checked, never raising for a bad file."""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from perception_r1_verl import frames
from perception_r1_verl.data.rules import CellError, OutsideRootError

_KEEP_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP"}
# Modes verl's loader (qwen_vl_utils.to_rgb: RGBA on white, else convert("RGB")) renders as
# the pixels mean. Others are not: 16-bit grey clips to white, alpha other than RGBA is dropped.
_FAITHFUL_MODES = {"1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


@dataclass
class LoadedImage:
    """What a worker returns: the bytes to store and the original size, or a rule hit."""

    data: bytes = b""
    size: tuple[int, int] = (0, 0)
    error: str | None = None  # a RULES key
    detail: str = ""
    converted: str | None = None  # the mode re-encoded as RGB (see model_rgb)


def load_image(path, store: str, family: str, min_pixels: int, max_pixels: int) -> LoadedImage:
    """Read and fully decode one image (a file, or anything with ``read_bytes``, such as
    :class:`~perception_r1_verl.data.layouts.TableImage`); never raises for bad files.

    ``store="original"`` keeps the file's bytes (re-encoded as PNG only for formats
    other than JPEG/PNG/WebP/GIF/BMP); ``"resized"`` stores the image already resized
    to the model's input size as JPEG, which the processor then leaves as it is.
    """
    try:
        data = (path if hasattr(path, "read_bytes") else Path(path)).read_bytes()
    except FileNotFoundError:
        return LoadedImage(error="missing_image", detail=str(path))
    except CellError as e:
        return LoadedImage(error="malformed_record", detail=f"{path}: {e}")
    except OutsideRootError as e:
        return LoadedImage(error="image_outside_root", detail=f"{path}: {e}")
    except OSError as e:
        return LoadedImage(error="corrupt_image", detail=f"{path}: {e}")
    try:
        with Image.open(BytesIO(data)) as im:
            im.load()  # a truncated file fails here, not at training time
            size, fmt = im.size, im.format
            try:
                target = frames.input_size(family, size, min_pixels, max_pixels)
            except ValueError as e:
                return LoadedImage(error="bad_aspect_ratio", detail=f"{path}: {e}")
            faithful = renders_faithfully(im)
            try:
                rgb = model_rgb(im) if store == "resized" or not faithful else None
            except ValueError as e:
                return LoadedImage(error="unsupported_image_mode", detail=f"{path}: {e}")
            if store == "resized":
                data = _encode(rgb.resize(target), "JPEG")
            elif not faithful:
                data = _encode(rgb, "PNG")
            elif fmt not in _KEEP_FORMATS:
                data = _encode(im, "PNG")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        return LoadedImage(error="corrupt_image", detail=f"{path}: {e}")
    return LoadedImage(data=data, size=size, converted=None if faithful else im.mode)


def renders_faithfully(im: Image.Image) -> bool:
    """Whether verl's loader (:func:`to_rgb`) shows ``im`` as its pixels mean.

    >>> renders_faithfully(Image.new("RGB", (2, 2))), renders_faithfully(Image.new("I;16", (2, 2)))
    (True, False)
    """
    return im.mode in _FAITHFUL_MODES and not (im.mode == "P" and "transparency" in im.info)


def model_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB the way it is meant to look, where :func:`to_rgb` gets it wrong:
    16-bit grey scaled to 8 bits (not clipped to white), any transparency composited on
    white as verl does for RGBA. 32-bit integer and float pixels have no range to scale
    from: ValueError (the converter counts ``unsupported_image_mode``).

    >>> import numpy as np
    >>> grey = Image.fromarray(np.full((2, 2), 32896, np.uint16))  # mid-grey, 16 bits
    >>> to_rgb(grey).getpixel((0, 0)), model_rgb(grey).getpixel((0, 0))
    ((255, 255, 255), (128, 128, 128))
    >>> model_rgb(Image.new("LA", (2, 2), (0, 0))).getpixel((0, 0))  # fully transparent
    (255, 255, 255)
    """
    if im.mode in _SIXTEEN_BIT:
        grey = np.round(np.asarray(im, dtype=np.float64) / 257).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if im.mode in ("I", "F"):
        raise ValueError(
            f"mode {im.mode} ({'32-bit integer' if im.mode == 'I' else 'float'} pixels) has no 8-bit range"
        )
    if not renders_faithfully(im):
        im = im.convert("RGBA")
    return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB as ``qwen_vl_utils`` makes it (alpha composited on white)."""
    if im.mode == "RGBA":
        out = Image.new("RGB", im.size, (255, 255, 255))
        out.paste(im, mask=im.split()[3])
        return out
    return im.convert("RGB")


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = BytesIO()
    im.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()
