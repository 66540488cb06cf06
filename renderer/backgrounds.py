"""Backgrounds behind the objects: crops of real photographs, or plain colours.

Differentiable with respect to the crop (centre and size, through ``grid_sample``) and the
colour; the choice of image is discrete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from renderer.camera import Size, band_origin, image_shape

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


class BackgroundError(ValueError):
    """A background image set that cannot be used (names the file and the problem)."""


def load_image(path: Path, max_side: int | None = None) -> Float[Tensor, "3 H W"]:
    """An RGB image file as a float tensor in [0, 1], optionally shrunk to ``max_side``."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")  # upright, as a camera app shows it
            if max_side is not None and max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as error:
        raise BackgroundError(f"{path}: not a readable image ({error})") from error
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class BackgroundSet:
    """A list of background photographs, cropped and resized on demand."""

    def __init__(self, images: list[Float[Tensor, "3 H W"]], names: list[str]) -> None:
        self.images = images
        self.names = names

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def empty(cls) -> "BackgroundSet":
        """No photographs: only plain-colour backgrounds (``background_ids == -1``)."""
        return cls([], [])

    @classmethod
    def from_folder(cls, folder: Path, max_side: int = 512) -> "BackgroundSet":
        """Every image file in ``folder`` (sorted by name), shrunk to at most ``max_side``."""
        folder = Path(folder)
        if not folder.is_dir():
            raise BackgroundError(f"{folder}: background folder does not exist")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise BackgroundError(
                f"{folder}: background set is empty (no {', '.join(sorted(IMAGE_SUFFIXES))} files)"
            )
        return cls([load_image(p, max_side) for p in paths], [p.name for p in paths])

    def compose(
        self,
        background_ids: Int[Tensor, "B"],
        background_crop: Float[Tensor, "B 3"],
        background_color: Float[Tensor, "B 3"],
        size: Size,
    ) -> Float[Tensor, "B 3 H W"]:
        """Backgrounds of ``size`` (renderer.camera): a square crop of image ``id`` (centre u, v
        in [0, 1]; side as a fraction of the image's shorter side) resized to the longer side,
        of which a rectangular ``size`` keeps the centre band; or the plain colour where
        ``id == -1``."""
        batch = background_ids.shape[0]
        height, width = image_shape(size)
        longer = max(height, width)
        top, left = band_origin(size)
        out = background_color[:, :, None, None].expand(batch, 3, height, width)
        if batch and int(background_ids.max()) >= len(self.images):
            raise BackgroundError(
                f"background id {int(background_ids.max())} out of range: the set has {len(self.images)} images"
            )
        rows = [i for i in range(batch) if int(background_ids[i]) >= 0]
        if not rows:
            return out
        crops = []
        for i in rows:
            image = self.images[int(background_ids[i])].to(background_crop.device, background_crop.dtype)
            _, image_height, image_width = image.shape
            short = min(image_height, image_width)
            u, v, side = background_crop[i].unbind()
            # Affine grid in normalised [-1, 1] image coordinates: scale to the crop, move it to
            # its centre, clamped so the crop stays inside the image.
            sx = side * short / image_width
            sy = side * short / image_height
            cx = (u * 2 - 1).clamp(-1 + sx, 1 - sx)
            cy = (v * 2 - 1).clamp(-1 + sy, 1 - sy)
            zero = torch.zeros_like(sx)
            theta = torch.stack([torch.stack([sx, zero, cx]), torch.stack([zero, sy, cy])])[None]
            grid = F.affine_grid(theta, [1, 3, longer, longer], align_corners=False)
            grid = grid[:, top : top + height, left : left + width]  # only the band is sampled
            crops.append(F.grid_sample(image[None], grid, mode="bilinear", align_corners=False)[0])
        out = out.clone()
        out[rows] = torch.stack(crops)
        return out
