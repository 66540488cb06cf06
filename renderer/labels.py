"""Detection labels from instance masks: tight boxes, visible fractions, which slots to keep.

Everything here thresholds masks, so none of it is differentiable (the masks themselves are).
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from renderer.camera import Size, image_shape, pixel_coordinates

MASK_THRESHOLD = 0.5
"""A pixel belongs to an instance where its soft mask exceeds this."""


def boxes_from_masks(masks: Float[Tensor, "*batch H W"], threshold: float = MASK_THRESHOLD) -> Float[Tensor, "*batch 4"]:
    """Tight xyxy pixel boxes around ``masks > threshold`` (pixel edges, so a single pixel at
    (x, y) gives (x, y, x + 1, y + 1)); all zeros for empty masks."""
    inside = masks.detach() > threshold
    height, width = inside.shape[-2:]
    cols = inside.any(dim=-2)
    rows = inside.any(dim=-1)
    xs = torch.arange(width, device=masks.device)
    ys = torch.arange(height, device=masks.device)
    big = max(height, width) + 1
    x0 = torch.where(cols, xs, big).amin(dim=-1)
    x1 = torch.where(cols, xs, -1).amax(dim=-1) + 1
    y0 = torch.where(rows, ys, big).amin(dim=-1)
    y1 = torch.where(rows, ys, -1).amax(dim=-1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=-1).float()
    empty = ~cols.any(dim=-1)
    return torch.where(empty[..., None], torch.zeros_like(boxes), boxes)


def visible_fractions(
    masks: Float[Tensor, "B M H W"], alone_masks: Float[Tensor, "B M H W"], threshold: float = MASK_THRESHOLD
) -> Float[Tensor, "B M"]:
    """Visible area (after occlusion) over the object's own area when rendered alone."""
    visible = (masks.detach() > threshold).flatten(2).sum(-1).float()
    own = (alone_masks.detach() > threshold).flatten(2).sum(-1).float()
    return torch.where(own > 0, visible / own.clamp(min=1), torch.zeros_like(own))


def kept_slots(
    present: Bool[Tensor, "B M"], boxes: Float[Tensor, "B M 4"], visible: Float[Tensor, "B M"], min_visible: float
) -> Bool[Tensor, "B M"]:
    """Slots that get a label: present, with a non-empty box, at least ``min_visible`` visible."""
    nonempty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    return present & nonempty & (visible >= min_visible)


def in_image_fractions(corners: Float[Tensor, "B M K 3"], focal: float, size: Size) -> Float[Tensor, "B M"]:
    """Share of each object's projected box that lies inside the ``size`` image (renderer.camera:
    a square side or the centre band (height, width) of the longer side's square), from
    the camera-frame corners of its bounding box (1 where a corner is behind the camera: no
    finite box). Multiplies the occlusion-visible fraction, so an object cut by the image border
    to a sliver is not labelled: its mask, and so its alone mask, ends at the border too."""
    corners = corners.detach()
    ahead = (-corners[..., 2] > 1e-6).all(-1)
    height, width = image_shape(size)
    u, v = pixel_coordinates(corners, focal, size)
    lo = torch.stack([u.amin(-1), v.amin(-1)], dim=-1)
    hi = torch.stack([u.amax(-1), v.amax(-1)], dim=-1)
    full = (hi - lo).clamp(min=1e-9).prod(-1)
    limit = torch.tensor([width, height], dtype=hi.dtype, device=hi.device)
    inside = (torch.minimum(hi.clamp(min=0), limit) - torch.minimum(lo.clamp(min=0), limit)).clamp(min=0).prod(-1)
    return torch.where(ahead, inside / full, torch.ones_like(full))
