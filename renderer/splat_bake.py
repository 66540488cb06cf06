"""Bake a nerfsim NeRF object (any ``renderer.raymarch.RadianceField``: a nerfsim asset or a loaded
nerfstudio checkpoint) into a 3D Gaussian splat, so that every asset can take the fast path.

The NeRF is rendered from cameras all around it (``renderer.train_object.render_views``, the
views' alpha being its opacity), Gaussians start at random points of its occupied space with the
field's own colour there, and ``renderer.train_splat.train_splat`` fits them to the renders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from renderer.camera import focal_length
from renderer.mesh import framing_distance, orbit_cameras
from renderer.posed_images import PosedImages
from renderer.raymarch import RadianceField
from renderer.splat import Gaussians, SplatError
from renderer.splat_init import gaussians_from_points
from renderer.train_object import psnr_on_white, render_views
from renderer.train_splat import SplatTrainConfig, render_splat_views, train_splat


@dataclass
class BakeConfig:
    """Configuration of :func:`bake_nerf`."""

    views: int = 100
    """NeRF renders the splat is fitted to, from cameras spread over the whole sphere."""
    size: int = 128
    """Side of the square renders, pixels."""
    fov_deg: float = 40.0
    """Field of view of the renders (the object's bounding sphere fills it)."""
    samples_per_ray: int = 128
    """Ray-marching samples across the object's box per pixel of the renders."""
    candidate_points: int = 200_000
    """Random points of the box tested for the starting Gaussians (the occupied ones are kept)."""
    min_opacity: float = 0.5
    """A candidate point is kept where a step of one occupancy cell through the field is at least
    this opaque."""
    train: SplatTrainConfig = field(default_factory=SplatTrainConfig)
    """The splat training on the renders (its ``initial_gaussians`` caps the starting points)."""
    seed: int = 0
    """Seeds the cameras (the lattice's turn) and the starting points."""


def nerf_views(nerf: RadianceField, config: BakeConfig) -> PosedImages:
    """The field rendered from ``config.views`` cameras around it, as a posed image set."""
    aabb = nerf.aabb.detach().float().cpu()
    c2w = orbit_cameras(config.views, framing_distance((aabb[1] - aabb[0]) / 2, config.fov_deg),
                        elevation_range_deg=(-89.0, 89.0), seed=config.seed)
    focal = focal_length(config.size, config.fov_deg)
    empty = torch.zeros(config.views, config.size, config.size, 1)
    cameras = PosedImages(rgb=empty.expand(-1, -1, -1, 3), alpha=empty, c2w=c2w, fx=focal, fy=focal,
                          cx=config.size / 2, cy=config.size / 2, width=config.size, height=config.size,
                          aabb=aabb, image_paths=[])
    premultiplied, alpha = render_views(nerf, cameras, config.samples_per_ray)
    cameras.rgb = torch.where(alpha > 1e-4, premultiplied / alpha.clamp(min=1e-4), torch.zeros_like(premultiplied)).clamp(0, 1)
    cameras.alpha = alpha.clamp(0, 1)
    return cameras


@torch.no_grad()
def dense_points_and_colours(nerf: RadianceField, config: BakeConfig,
                             generator: torch.Generator) -> tuple[Float[Tensor, "N 3"], Float[Tensor, "N 3"]]:
    """Up to ``config.train.initial_gaussians`` random points where the field is dense, and the
    field's colour there (the mean over six axis directions, for view-dependent fields)."""
    aabb = nerf.aabb.detach().float().cpu()
    points = aabb[0] + torch.rand(config.candidate_points, 3, generator=generator) * (aabb[1] - aabb[0])
    points = points[nerf.occupied(points)]
    step = float((aabb[1] - aabb[0]).norm()) / 64
    density, _ = nerf(points, torch.zeros_like(points), None) if points.numel() else (points[:, 0], points)
    points = points[1 - torch.exp(-density * step) >= config.min_opacity][: config.train.initial_gaussians]
    if points.shape[0] < 4:
        raise SplatError(f"the NeRF has no dense region to bake (fewer than 4 of {config.candidate_points} "
                         f"random points are at least {config.min_opacity} opaque over {step:.4f} m)")
    axes = torch.cat([torch.eye(3), -torch.eye(3)])
    colours = torch.stack([nerf(points, axis.expand_as(points), None)[1] for axis in axes]).mean(dim=0)
    return points, colours


def bake_nerf(nerf: RadianceField, config: BakeConfig, progress: bool = True) -> tuple[Gaussians, dict]:
    """A splat of ``nerf`` (same object frame) and its training statistics, with the mean PSNR
    over its own renders on white (``render_psnr_db``)."""
    generator = torch.Generator().manual_seed(config.seed)
    views = nerf_views(nerf, config)
    start = gaussians_from_points(*dense_points_and_colours(nerf, config, generator), config.train.sh_degree)
    gaussians, stats = train_splat(views, config.train, init=start, progress=progress)
    rgb, alpha = render_splat_views(gaussians, views)
    stats["render_psnr_db"] = round(psnr_on_white(rgb, alpha, views), 2)
    stats["baked_views"] = config.views
    if not math.isfinite(stats["render_psnr_db"]):
        raise SplatError("baking produced a splat that renders NaN")
    return gaussians, stats
