"""Backgrounds harvested from labelled photos: the largest rectangles of each photo that hold no
part of any labelled box, cut out as background images.

A photo is seen on a grid of cells (about a hundredth of its longer side); a cell is blocked
when any part of a labelled box, grown by one cell, falls in it, so a rectangle of free cells
is clear of every box by at least a cell (annotations are tight; shadows and soft edges are
not). Each photo gives up to ``per_photo`` rectangles, largest first, each at least
``min_side_fraction`` of the photo's shorter side on both sides; a rectangle taken is blocked
for the next, so they do not overlap. What they show is the photo's own table, walls and
unlabelled clutter, at the photo's own light: the user's real background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from renderer.backgrounds import BackgroundError, BackgroundSet

GRID_CELLS = 96
"""Cells along a photo's longer side."""
MIN_SIDE_FRACTION = 0.2
"""A harvested background is at least this fraction of the photo's shorter side on both sides
(96 px of a 640 x 480 photo): smaller crops would be blown up many times behind the objects."""
PER_PHOTO = 3
"""Rectangles taken from one photo at most."""
MAX_BACKGROUNDS = 96
"""Harvested backgrounds kept at most (from photos spread over the set): each is held in memory."""


@dataclass
class Harvested:
    """One harvested background and where it came from."""

    photo: Path
    box: tuple[int, int, int, int]
    """x0, y0, x1, y1 in the photo's pixels (exclusive ends)."""
    image: Float[Tensor, "3 H W"]


def free_rectangles(
    width: int,
    height: int,
    boxes: Float[Tensor, "N 4"],
    min_side: int,
    count: int = PER_PHOTO,
) -> list[tuple[int, int, int, int]]:
    """Up to ``count`` non-overlapping rectangles (x0, y0, x1, y1 pixels, exclusive ends) of a
    ``width`` x ``height`` photo, largest first, that keep at least a grid cell away from every
    xyxy box and are at least ``min_side`` pixels on both sides."""
    cell = max(1, math.ceil(max(width, height) / GRID_CELLS))
    columns, rows = width // cell, height // cell  # a partial last cell is left out
    blocked = np.zeros((rows, columns), dtype=bool)
    for x0, y0, x1, y1 in boxes.tolist():
        # Cells touching the box, and one more on each side.
        left, top = max(0, math.floor(x0 / cell) - 1), max(0, math.floor(y0 / cell) - 1)
        right, bottom = min(columns, math.ceil(x1 / cell) + 1), min(rows, math.ceil(y1 / cell) + 1)
        blocked[top:bottom, left:right] = True
    min_cells = max(1, math.ceil(min_side / cell))
    found = []
    for _ in range(count):
        best = _largest_free(blocked, min_cells)
        if best is None:
            break
        left, top, right, bottom = best
        blocked[top:bottom, left:right] = True
        found.append((left * cell, top * cell, right * cell, bottom * cell))
    return found


def _largest_free(blocked: np.ndarray, min_cells: int) -> tuple[int, int, int, int] | None:
    """The largest rectangle of free cells with both sides >= ``min_cells`` (left, top, right,
    bottom in cells, exclusive ends), or None. For each bottom row, ``heights`` counts the free
    cells above each column; for each width the window minimum of the heights is the tallest
    rectangle of that width ending there."""
    rows, columns = blocked.shape
    heights = np.zeros(columns, dtype=np.int64)
    best, best_area = None, 0
    for bottom in range(rows):
        heights = np.where(blocked[bottom], 0, heights + 1)
        if heights.max() < min_cells:
            continue
        window = heights.copy()
        for width in range(1, columns + 1):
            if width > 1:
                window = np.minimum(window[:-1], heights[width - 1:])
            if width < min_cells:
                continue
            tallest = window.max()
            if tallest < min_cells:
                break  # wider windows are no taller
            if tallest * width > best_area:
                left = int(window.argmax())
                best_area = int(tallest * width)
                best = (left, bottom + 1 - int(tallest), left + width, bottom + 1)
    return best


def harvest(
    photos: Sequence[tuple[Path, Float[Tensor, "N 4"]]],
    min_side_fraction: float = MIN_SIDE_FRACTION,
    per_photo: int = PER_PHOTO,
    max_side: int = 512,
    max_backgrounds: int = MAX_BACKGROUNDS,
) -> list[Harvested]:
    """The box-free rectangles (:func:`free_rectangles`) of each (photo path, xyxy pixel boxes),
    cut out and shrunk to at most ``max_side``; at most ``max_backgrounds``, from every k-th
    photo where the set is larger. A photo whose boxes leave no such region gives none; raises
    :class:`BackgroundError` when no photo gives any."""
    found: list[Harvested] = []
    stride = max(1, len(photos) * per_photo // max_backgrounds)
    for path, boxes in list(photos)[::stride]:
        if len(found) >= max_backgrounds:
            break
        try:
            with Image.open(path) as opened:
                # Upright as the boxes were drawn: the labelled set's reader (OpenCV) applies EXIF rotation.
                photo = ImageOps.exif_transpose(opened).convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise BackgroundError(f"{path}: not a readable image ({error})") from error
        width, height = photo.size
        for box in free_rectangles(width, height, boxes, round(min_side_fraction * min(width, height)), per_photo):
            crop = photo.crop(box)
            crop.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            pixels = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
            found.append(Harvested(Path(path), box, pixels))
    del found[max_backgrounds:]
    if not found:
        raise BackgroundError(
            f"none of the {len(photos)} labelled photos has a region clear of its labelled boxes of at least "
            f"{min_side_fraction:.0%} of its shorter side on both sides: no backgrounds harvested"
        )
    return found


def harvested_backgrounds(photos: Sequence[tuple[Path, Float[Tensor, "N 4"]]], **settings) -> BackgroundSet:
    """:func:`harvest` as a background set, named ``<photo stem>_x0_y0_x1_y1``."""
    found = harvest(photos, **settings)
    return BackgroundSet([h.image for h in found], [f"{h.photo.stem}_{'_'.join(map(str, h.box))}" for h in found])
