"""Sizes of one image and the mapping of its annotations into the model's answer frame.

Coordinates in the answer frame are rounded to integers (the models answer integers)
and clipped to the frame; see :meth:`Geometry.box`.
"""

from __future__ import annotations

from dataclasses import dataclass

from perception_r1_verl import frames
from perception_r1_verl.data.options import ConvertOptions
from perception_r1_verl.data.rules import Stats


@dataclass
class Geometry:
    """Sizes of one image: original, what the model sees, and the answer frame."""

    image_size: tuple[int, int]
    input_size: tuple[int, int]
    frame: tuple[int, int]

    @classmethod
    def of(cls, image_size, options: ConvertOptions) -> Geometry:
        inp = frames.input_size(options.model_family, image_size, options.min_pixels, options.max_pixels)
        return cls(tuple(image_size), inp, frames.answer_frame(options.model_family, inp))

    def box(self, xyxy, stats: Stats, record: str) -> list[int] | None:
        """``xyxy`` (original pixels) in the answer frame, or None when it must be dropped.

        Clipped to the image first (a repair), then scaled and rounded to integers; a box
        with no area left is dropped. Zero-area input boxes are dropped before clipping.

        >>> g = Geometry((640, 480), (644, 476), (644, 476))
        >>> g.box([10.2, 20.7, 700, 100], Stats(), "r")
        [10, 21, 644, 99]
        """
        x1, y1, x2, y2 = xyxy
        if not (x2 > x1 and y2 > y1):
            stats.hit("box_zero_area", record)
            return None
        clipped = frames.clip_box(xyxy, self.image_size)
        if clipped != list(xyxy):
            stats.hit("box_outside_image", record)
        box = [round(v) for v in frames.scale_box(clipped, self.image_size, self.frame)]
        if not (box[2] > box[0] and box[3] > box[1]):
            stats.hit("box_below_resolution", record)
            return None
        return box

    def point(self, xy, stats: Stats, record: str) -> list[int]:
        """A point (original pixels) in the answer frame, clipped and rounded.

        >>> Geometry((100, 50), (112, 56), (1000, 1000)).point([50, 60], Stats(), "r")
        [500, 1000]
        """
        x = min(max(xy[0], 0), self.image_size[0])
        y = min(max(xy[1], 0), self.image_size[1])
        if (x, y) != (xy[0], xy[1]):
            stats.hit("point_outside_image", record)
        sx, sy = self.frame[0] / self.image_size[0], self.frame[1] / self.image_size[1]
        return [round(x * sx), round(y * sy)]
