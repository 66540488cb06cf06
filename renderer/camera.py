"""Where each object sits relative to the camera, and the camera's rays.

One convention for the whole project (nerfstudio's): OpenGL camera axes, x right, y up, the
camera looking down -z. The scene is built in the camera frame, so an object pose is its
object-to-camera transform. Object frames are metric, y up, origin at the centre of the
object's bounding box (the asset builders put it there).

Image sizes are an int (a square) or ``(height, width)``. The field of view spans the longer
side, and a W x H image (W >= H) is exactly the centre band of rows of the W x W square image
(the band starts at row ``(W - H) // 2``; likewise a centre band of columns when H > W), so
object offsets stay in units of half the longer side and an object has the same scale and
position in a square render (the letterboxed frame the closed loop searches in) and in a
rectangular one (the photos' aspect). Only the band's rays are generated.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor


def view_rotation(
    azimuth: Float[Tensor, "*batch"],
    elevation: Float[Tensor, "*batch"],
    roll: Float[Tensor, "*batch"],
) -> Float[Tensor, "*batch 3 3"]:
    """Rotation from object to camera axes for a camera that sees the object from (azimuth,
    elevation) and is rolled about its viewing axis.

    The camera sits on the object-frame direction ``(cos e sin a, sin e, cos e cos a)``;
    azimuth 0 and elevation 0 look at the object's +z face with the object's y axis up.
    Written in closed form (no look-at cross products) so it is smooth at the poles.
    """
    ca, sa = torch.cos(azimuth), torch.sin(azimuth)
    ce, se = torch.cos(elevation), torch.sin(elevation)
    zero = torch.zeros_like(azimuth)
    # Camera axes expressed in the object frame (columns of camera-to-object).
    x_axis = torch.stack([ca, zero, -sa], dim=-1)
    y_axis = torch.stack([-se * sa, ce, -se * ca], dim=-1)
    z_axis = torch.stack([ce * sa, se, ce * ca], dim=-1)
    cam_to_obj = torch.stack([x_axis, y_axis, z_axis], dim=-1)
    cr, sr = torch.cos(roll), torch.sin(roll)
    one = torch.ones_like(roll)
    # Rolling the camera by r about its z axis: camera-to-object becomes R @ Rz(r).
    rz = torch.stack(
        [
            torch.stack([cr, -sr, zero], dim=-1),
            torch.stack([sr, cr, zero], dim=-1),
            torch.stack([zero, zero, one], dim=-1),
        ],
        dim=-2,
    )
    return (cam_to_obj @ rz).transpose(-1, -2)


def object_to_camera(
    azimuth: Float[Tensor, "*batch"],
    elevation: Float[Tensor, "*batch"],
    roll: Float[Tensor, "*batch"],
    distance: Float[Tensor, "*batch"],
    offset: Float[Tensor, "*batch 2"],
    fov_deg: float,
) -> tuple[Float[Tensor, "*batch 3 3"], Float[Tensor, "*batch 3"]]:
    """Object-to-camera rotation and translation: ``p_cam = R @ p_obj + t``.

    ``distance`` is the depth of the object's centre along the optical axis (metres) and
    ``offset`` its projected position in units of half the image's longer side (the side the
    field of view spans), so the centre projects exactly to ``offset`` whatever the distance.
    """
    half = math.tan(math.radians(fov_deg) / 2)
    t = torch.stack(
        [offset[..., 0] * distance * half, offset[..., 1] * distance * half, -distance], dim=-1
    )
    return view_rotation(azimuth, elevation, roll), t


Size = int | tuple[int, int]
"""An image size: an int for a square, or ``(height, width)``."""


def image_shape(size: Size) -> tuple[int, int]:
    """``(height, width)`` of ``size``; raises ValueError for a non-positive side."""
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width} (height x width)")
    return height, width


def band_origin(size: Size) -> tuple[int, int]:
    """Row and column of the square (longer side) image at which the ``size`` band starts."""
    height, width = image_shape(size)
    longer = max(height, width)
    return (longer - height) // 2, (longer - width) // 2


def camera_ray_directions(size: Size, fov_deg: float, device: torch.device | str = "cpu") -> Float[Tensor, "H W 3"]:
    """Unit ray directions through pixel centres of a pinhole camera, camera frame: the centre
    band ``size`` of the square camera whose side is ``size``'s longer side (module docstring).

    Row 0 is the top of the image (y up in camera space, so rows go down in y).
    """
    height, width = image_shape(size)
    longer = max(height, width)
    top, left = band_origin(size)
    focal = focal_length(longer, fov_deg)
    xs = torch.arange(left, left + width, dtype=torch.float32, device=device) + 0.5 - longer / 2
    ys = torch.arange(top, top + height, dtype=torch.float32, device=device) + 0.5 - longer / 2
    y, x = torch.meshgrid(-ys, xs, indexing="ij")
    dirs = torch.stack([x / focal, y / focal, -torch.ones_like(x)], dim=-1)
    return dirs / dirs.norm(dim=-1, keepdim=True)


def pixel_coordinates(
    points: Float[Tensor, "... 3"], focal: float, size: Size
) -> tuple[Float[Tensor, "..."], Float[Tensor, "..."]]:
    """Column and row (continuous pixels, a pixel's centre at +0.5) at which camera-frame
    ``points`` project in the ``size`` image: the inverse of :func:`camera_ray_directions`,
    band included. Depths are clamped to 1e-6, so points behind the camera give finite values
    the caller must discard."""
    height, width = image_shape(size)
    top, left = band_origin(size)
    centre = max(height, width) / 2
    depth = (-points[..., 2]).clamp(min=1e-6)
    return focal * points[..., 0] / depth + centre - left, centre - top - focal * points[..., 1] / depth


def focal_length(size: Size, fov_deg: float) -> float:
    """Focal length in pixels of the camera used everywhere in nerfsim (the field of view spans
    the longer side)."""
    return (max(image_shape(size)) / 2) / math.tan(math.radians(fov_deg) / 2)
