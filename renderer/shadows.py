"""Contact shadows: the darkening under an object resting on its support plane.

An object on a table blocks part of the light that reaches the table around its base, most
where it touches. Ray-marching the shadow would cost a second render per light; instead each
object's occupied points (in its resting pose) are projected down onto its support plane along
the light direction, weighted by how close they are to the plane (points high above it cast a
faint, diffuse shadow), projected into the camera and splatted as soft Gaussian blobs. The blobs
combine as a soft union (``1 - prod(1 - w g / 2)``), so the footprint saturates and its edge is
soft. The renderer multiplies the background by ``1 - strength * mask`` before the objects are
composited over it (renderer.scene_renderer), so the shadow is in every image the renderer
makes: the loop's and the final dataset's.

Differentiable with respect to each slot's view (azimuth, elevation, roll, distance, offset):
the blobs move with the projection. Not differentiable: the pose (a table index), the light
direction (a function of the image's recorded background crop) and the pixel window each blob
is evaluated in (a few blob widths around the footprint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from renderer.camera import Size, focal_length, image_shape, object_to_camera, pixel_coordinates
from renderer.resting import PoseTable
from renderer.scene_types import SceneParams


class ShadowError(ValueError):
    """A contact-shadow setting out of its range (names the field)."""


@dataclass(frozen=True)
class ContactShadowConfig:
    """How dark and soft the contact shadows are; used only for scenes with resting poses."""

    strength: float = 0.5
    """Largest darkening of the background (0: no shadows; 1: black where the footprint is dense)."""
    softness: float = 0.15
    """Blob width (Gaussian sigma) as a fraction of the object's radius: the penumbra's width."""
    contact_falloff: float = 0.3
    """A point's weight is ``exp(-height / (contact_falloff * object height))``: the shadow is
    darkest where the object touches the plane and fades for the parts above it."""
    light_jitter_deg: float = 15.0
    """The light's tilt from vertical is drawn in [0, light_jitter_deg] per image, in a direction
    drawn in [0, 360); both are a fixed function of the image's background crop (which psi draws
    uniformly and records), so a replayed scene casts the same shadow."""

    def __post_init__(self) -> None:
        if not 0 <= self.strength <= 1:
            raise ShadowError(f"ContactShadowConfig.strength: must be in [0, 1], got {self.strength}")
        for name in ("softness", "contact_falloff"):
            if not getattr(self, name) > 0:
                raise ShadowError(f"ContactShadowConfig.{name}: must be > 0, got {getattr(self, name)}")
        if not 0 <= self.light_jitter_deg < 80:
            raise ShadowError(f"ContactShadowConfig.light_jitter_deg: must be in [0, 80), got {self.light_jitter_deg}")


def light_directions(background_crop: Float[Tensor, "B 3"], jitter_deg: float) -> Float[Tensor, "B 3"]:
    """Unit directions the light travels (downwards, -y, tilted by the jitter), one per image,
    from a hash of its background crop."""
    crop = background_crop.detach().double()
    hashed = torch.frac(torch.sin(crop @ torch.tensor([[12.9898, 39.346], [78.233, 11.135], [37.719, 83.155]],
                                                      dtype=torch.float64, device=crop.device)) * 43758.5453)
    tilt = torch.deg2rad(jitter_deg * hashed[:, 0])
    around = 2 * math.pi * hashed[:, 1]
    direction = torch.stack([tilt.sin() * around.cos(), -tilt.cos(), tilt.sin() * around.sin()], dim=-1)
    return direction.to(background_crop.dtype)


def contact_shadow_mask(
    params: SceneParams, tables: list[PoseTable], fov_deg: float, size: Size, config: ContactShadowConfig
) -> Float[Tensor, "B 1 H W"]:
    """Shadow coverage in [0, 1) of every image of ``params`` (which must have ``pose_ids``) at
    ``size`` (renderer.camera: a square side or the centre band (height, width) of the square of
    the longer side); ``tables`` holds each object's pose table."""
    assert params.pose_ids is not None
    device, dtype = params.distance.device, params.distance.dtype
    batch = params.batch_size
    view, translation = object_to_camera(
        params.azimuth, params.elevation, params.roll, params.distance, params.offset, fov_deg
    )
    light = light_directions(params.background_crop, config.light_jitter_deg)
    focal = focal_length(size, fov_deg)
    image_rows, image_columns = image_shape(size)
    xs = torch.arange(image_columns, device=device, dtype=dtype) + 0.5
    ys = torch.arange(image_rows, device=device, dtype=dtype) + 0.5
    log_unlit = [torch.zeros(image_rows, image_columns, device=device, dtype=dtype) for _ in range(batch)]
    for b, m in params.present.nonzero().tolist():
        table = tables[int(params.object_ids[b, m])]
        pose_id = int(params.pose_ids[b, m])
        points = table.points.to(device=device, dtype=dtype)
        rested = points @ table.rotation(pose_id).to(device=device, dtype=dtype).T
        height = rested[:, 1] + table.height(pose_id)  # above the plane, >= 0 up to the padding
        above = height.clamp(min=0)
        ground = rested + (above / -light[b, 1])[:, None] * light[b]
        weight = torch.exp(-above / (config.contact_falloff * float(above.max()) + 1e-9))
        camera = ground @ view[b, m].T + translation[b, m]
        front = -camera[:, 2] > 1e-6
        if not bool(front.any()):
            continue
        camera, weight = camera[front], weight[front]
        u, v = pixel_coordinates(camera, focal, size)
        radius = float(points.norm(dim=-1).max())
        sigma = max(0.5, config.softness * radius * focal / float(params.distance[b, m]))
        reach = 3 * sigma
        x0, x1 = max(0, int(u.min() - reach)), min(image_columns, int(u.max() + reach) + 1)
        y0, y1 = max(0, int(v.min() - reach)), min(image_rows, int(v.max() + reach) + 1)
        if x0 >= x1 or y0 >= y1:
            continue  # the footprint is outside the image
        window = torch.zeros(y1 - y0, x1 - x0, device=device, dtype=dtype)
        for rows in torch.arange(len(u), device=device).split(32):  # bounds memory at 640 px
            dx = xs[None, x0:x1] - u[rows, None]  # N W
            dy = ys[None, y0:y1] - v[rows, None]  # N H
            blobs = torch.exp(-(dy[:, :, None] ** 2 + dx[:, None, :] ** 2) / (2 * sigma**2))
            window = window + torch.log1p(-0.5 * weight[rows, None, None] * blobs).sum(0)
        log_unlit[b] = log_unlit[b] + torch.nn.functional.pad(window, (x0, image_columns - x1, y0, image_rows - y1))
    return (1 - torch.exp(torch.stack(log_unlit)))[:, None]
