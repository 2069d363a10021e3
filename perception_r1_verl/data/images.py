"""Reading one image as a converter stores it: fully decoded, checked, never raising for a bad file."""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from PIL import Image

from perception_r1_verl import frames
from perception_r1_verl.data.rules import CellError, OutsideRootError

_KEEP_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP"}


@dataclass
class LoadedImage:
    """What a worker returns: the bytes to store and the original size, or a rule hit."""

    data: bytes = b""
    size: tuple[int, int] = (0, 0)
    error: str | None = None  # a RULES key
    detail: str = ""


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
            if store == "resized":
                data = _encode(to_rgb(im).resize(target), "JPEG")
            elif fmt not in _KEEP_FORMATS:
                data = _encode(im, "PNG")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        return LoadedImage(error="corrupt_image", detail=f"{path}: {e}")
    return LoadedImage(data=data, size=size)


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
