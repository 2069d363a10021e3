"""The options every converter shares (:class:`ConvertOptions`, the CLI flags of the same names)."""

from __future__ import annotations

from dataclasses import dataclass

from perception_r1_verl import frames
from perception_r1_verl.families import family

IMAGE_STORES = ("original", "resized")


@dataclass
class ConvertOptions:
    """Options shared by every converter (the CLI flags of the same names)."""

    split: str = "train"
    model_family: str = "qwen2_5_vl"
    min_pixels: int | None = None  # None: the family's processor minimum (Family.min_pixels)
    max_pixels: int = frames.DEFAULT_MAX_PIXELS
    think: bool = False
    limit: int | None = None
    seed: int = 0
    strict: bool = False
    workers: int = 0
    image_store: str = "original"
    row_group_rows: int = 256
    progress: bool = True

    def __post_init__(self):
        record = family(self.model_family)  # an unknown family raises here
        if self.min_pixels is None:
            self.min_pixels = record.min_pixels
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if self.image_store not in IMAGE_STORES:
            raise ValueError(f"image_store must be one of {IMAGE_STORES}")
        if self.limit is not None and self.limit <= 0:
            raise ValueError("limit must be positive")
