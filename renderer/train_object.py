"""Train an :class:`ObjectField` from a posed image set, fast on CPU, and save / load assets.

The recipe: carve the visual hull of the masks into the occupancy grid (so training starts by
sampling only near the object), then fit colours against random backgrounds (which teaches
exact alpha) with Adam, refreshing the occupancy grid from the learned density as it sharpens.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm import tqdm

from renderer.accelerators import TCNN_HASH_GRID, unavailable_reason
from renderer.object_field import (
    ObjectAssetMeta,
    ObjectField,
    ObjectFieldConfig,
    dilate,
    grid_cell_centres,
    grid_cells,
    shell,
)
from renderer.posed_images import PosedImages
from renderer.raymarch import PackedSamples, accumulate, compositing_weights, intersect_aabb, march_field

ASSET_META = "asset.json"
ASSET_WEIGHTS = "field.pt"


class AssetError(ValueError):
    """An object asset that cannot be loaded (names the file and the problem)."""


@dataclass
class ObjectTrainerConfig:
    """Configuration of :func:`train_object_field`."""

    model: ObjectFieldConfig = field(default_factory=ObjectFieldConfig)
    """The model to train."""
    steps: int = 3000
    """Optimisation steps (the run also stops at ``time_budget_s``)."""
    time_budget_s: float | None = None
    """Stop early after this many seconds of training, if set."""
    rays_per_step: int = 2048
    """Rays per step, drawn from the pixels whose rays cross the object's box."""
    samples_per_ray: int = 128
    """Stratified samples across the box along each ray (before empty-space skipping)."""
    learning_rate: float = 0.01
    """Adam learning rate at the start; decays exponentially to ``final_learning_rate``."""
    final_learning_rate: float = 0.001
    alpha_weight: float = 0.1
    """Weight of the opacity-vs-mask loss beside the colour loss against random backgrounds."""
    occupancy_every: int = 100
    """Refresh the empty-space grid from the learned density every this many steps."""
    shell_cells: int = 3
    """Train only in the outer layers of the visual hull, this many occupancy cells deep: the
    surface lies there, and sampling a solid object's inside is wasted work."""
    hull_fit_steps: int = 300
    """Steps that first fit the density to the visual hull (no rendering: cheap), so that
    training starts with sharp surfaces and marching skips everything behind them."""
    visibility_rays: int = 100_000
    """Training rays rendered at the end to drop the cells that no view sees (the inside and
    far side of the shell), which makes rendering several times cheaper."""
    seed: int = 0


def pixel_rays(images: PosedImages) -> tuple[Float[Tensor, "N 3"], Float[Tensor, "N 3"]]:
    """Origins and unit directions of every pixel of every image, image-major (OpenGL c2w)."""
    v, u = torch.meshgrid(
        torch.arange(images.height, dtype=torch.float32) + 0.5,
        torch.arange(images.width, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    camera_dirs = torch.stack(
        [(u - images.cx) / images.fx, -(v - images.cy) / images.fy, -torch.ones_like(u)], dim=-1
    ).reshape(-1, 3)
    rotation, position = images.c2w[:, :, :3], images.c2w[:, :, 3]
    dirs = torch.einsum("nij,pj->npi", rotation, camera_dirs).reshape(-1, 3)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = position.repeat_interleave(images.height * images.width, dim=0)
    return origins, dirs


def visual_hull(images: PosedImages, aabb: Float[Tensor, "2 3"], resolution: int) -> Bool[Tensor, "R R R"]:
    """Cells of the box whose centre some view sees and that project inside the mask of every
    view that sees them (dilated by one cell, so the hull is conservative)."""
    centres = grid_cell_centres(aabb, resolution).reshape(-1, 3)
    inside = torch.ones(centres.shape[0], dtype=torch.bool)
    seen_by_any = torch.zeros(centres.shape[0], dtype=torch.bool)
    # Dilate each mask by a pixel so thin parts survive the carving.
    masks = F.max_pool2d(images.alpha.permute(0, 3, 1, 2), 3, stride=1, padding=1)[:, 0] > 0.5
    for view in range(images.c2w.shape[0]):
        rotation, position = images.c2w[view, :, :3], images.c2w[view, :, 3]
        camera = (centres - position) @ rotation  # world -> camera: R^T (p - c)
        depth = -camera[:, 2]
        u = images.fx * camera[:, 0] / depth.clamp(min=1e-6) + images.cx
        v = -images.fy * camera[:, 1] / depth.clamp(min=1e-6) + images.cy
        seen = (depth > 0) & (u >= 0) & (u < images.width) & (v >= 0) & (v < images.height)
        ui = u.long().clamp(0, images.width - 1)
        vi = v.long().clamp(0, images.height - 1)
        inside &= ~seen | masks[view, vi, ui]
        seen_by_any |= seen
    return dilate((inside & seen_by_any).reshape(resolution, resolution, resolution))


def hull_bounds(images: PosedImages, resolution: int = 64) -> Float[Tensor, "2 3"]:
    """A box around the object when the image set does not give one: carve a cube that the
    cameras look into, then shrink it to the occupied cells with a 5 % margin."""
    reach = images.c2w[:, :, 3].norm(dim=-1).min() * 0.6
    cube = torch.stack([-reach.expand(3), reach.expand(3)])
    hull = visual_hull(images, cube, resolution)
    if not hull.any():
        raise AssetError("the masks carve away everything: no object is visible in the posed images")
    cells = hull.nonzero().float()
    size = (cube[1] - cube[0]) / resolution
    lo = cube[0] + cells.min(0).values * size
    hi = cube[0] + (cells.max(0).values + 1) * size
    margin = (hi - lo) * 0.05
    return torch.stack([lo - margin, hi + margin])


def render_rays(
    field: ObjectField,
    origins: Float[Tensor, "R 3"],
    directions: Float[Tensor, "R 3"],
    num_samples: int,
    jitter: torch.Generator | None = None,
) -> tuple[Float[Tensor, "R 3"], Float[Tensor, "R"]]:
    """Colour (premultiplied by opacity) and opacity of single-object rays."""
    samples = march_field(field, origins, directions, num_samples, jitter)
    weights = compositing_weights(samples)
    rgb = accumulate(weights[:, None] * samples.rgb, samples.ray_ids, origins.shape[0])
    return rgb, accumulate(weights, samples.ray_ids, origins.shape[0])


@torch.no_grad()
def render_views(
    field: ObjectField, images: PosedImages, num_samples: int, chunk: int = 16384
) -> tuple[Float[Tensor, "N H W 3"], Float[Tensor, "N H W 1"]]:
    """Premultiplied colour and opacity of the field seen from every camera of ``images``."""
    origins, dirs = pixel_rays(images)
    parts = [render_rays(field, origins[i : i + chunk], dirs[i : i + chunk], num_samples)
             for i in range(0, origins.shape[0], chunk)]
    shape = (images.c2w.shape[0], images.height, images.width)
    rgb = torch.cat([p[0] for p in parts]).reshape(*shape, 3)
    alpha = torch.cat([p[1] for p in parts]).reshape(*shape, 1)
    return rgb, alpha


def fit_density_to_hull(
    field: ObjectField, hull: Bool[Tensor, "G G G"], steps: int, generator: torch.Generator, points: int = 16384
) -> None:
    """Regress the field's opacity over one cell to the (trilinearly smoothed) visual hull at
    random points of the box. For convex objects this is already close to the true shape;
    concavities are carved later by the photometric loss."""
    optimizer = torch.optim.Adam(field.parameters(), lr=0.01, eps=1e-15)
    volume = hull[None, None].float()
    cell = float(((field.aabb[1] - field.aabb[0]) / hull.shape[0]).norm())
    for _ in range(steps):
        unit = torch.rand(points, 3, generator=generator) * 2 - 1
        # grid_sample indexes (x, y, z) as (W, H, D): flip to match the grid's (i, j, k) layout.
        target = F.grid_sample(volume, unit.flip(-1)[None, None, None], align_corners=False).reshape(-1)
        density, _ = field(field.aabb[0] + (unit + 1) / 2 * (field.aabb[1] - field.aabb[0]))
        opacity = 1 - torch.exp(-density * cell)
        loss = F.mse_loss(opacity, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


class CellVisibility:
    """The largest compositing weight that rays gave to samples in each occupancy cell: cells
    that rays crossed without ever seeing (the inside and far side of a solid) are dropped from
    the empty-space grid, so marching stops costing work behind surfaces."""

    def __init__(self, resolution: int, min_weight: float = 0.01) -> None:
        self.resolution = resolution
        self.min_weight = min_weight
        self.best = torch.zeros(resolution**3)
        self.visited = torch.zeros(resolution**3, dtype=torch.bool)

    @torch.no_grad()
    def record(
        self,
        field: ObjectField,
        origins: Float[Tensor, "R 3"],
        directions: Float[Tensor, "R 3"],
        samples: PackedSamples,
        weights: Float[Tensor, "N"],
    ) -> None:
        res = self.resolution
        points = origins[samples.ray_ids] + samples.t.detach()[:, None] * directions[samples.ray_ids]
        cell, _ = grid_cells(field.aabb, res, points)
        flat = (cell[:, 0] * res + cell[:, 1]) * res + cell[:, 2]
        self.best.scatter_reduce_(0, flat, weights, reduce="amax")
        self.visited[flat] = True

    def still_needed(self, occupied: Bool[Tensor, "G G G"]) -> Bool[Tensor, "G G G"]:
        """Cells some ray saw, or occupied cells no ray reached, grown by one cell so surfaces
        can still move."""
        keep = (self.best >= self.min_weight) | (~self.visited & occupied.reshape(-1))
        return dilate(keep.reshape((self.resolution,) * 3))


def psnr_on_white(
    rgb: Float[Tensor, "N H W 3"], alpha: Float[Tensor, "N H W 1"], images: PosedImages
) -> float:
    """PSNR (dB) of premultiplied renders against the image set, both over a white background."""
    prediction = rgb + (1 - alpha)
    target = images.rgb * images.alpha + (1 - images.alpha)
    mse = F.mse_loss(prediction.clamp(0, 1), target)
    return float(-10 * torch.log10(mse))


def train_object_field(
    images: PosedImages,
    config: ObjectTrainerConfig,
    progress: bool = True,
) -> tuple[ObjectField, dict]:
    """Fit an object field to a posed image set; returns it and training statistics."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    aabb = images.aabb if images.aabb is not None else hull_bounds(images)
    field_model = ObjectField(config.model, aabb)
    full_hull = visual_hull(images, aabb, config.model.occupancy_resolution)
    if not full_hull.any():
        raise AssetError("the masks carve away everything: no object is visible in the posed images")
    fit_density_to_hull(field_model, full_hull, config.hull_fit_steps, generator)
    hull = shell(full_hull, config.shell_cells)
    field_model.occupancy.copy_(hull)

    origins, dirs = pixel_rays(images)
    target_rgb = images.rgb.reshape(-1, 3)
    target_alpha = images.alpha.reshape(-1)
    _, _, useful = intersect_aabb(origins, dirs, aabb)  # rays that miss the box teach nothing
    origins, dirs = origins[useful], dirs[useful]
    target_rgb, target_alpha = target_rgb[useful], target_alpha[useful]

    optimizer = torch.optim.Adam(field_model.parameters(), lr=config.learning_rate, eps=1e-15)
    gamma = (config.final_learning_rate / config.learning_rate) ** (1 / max(config.steps, 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma)
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="train object NeRF", disable=not progress, unit="step")
    steps_done, loss_value = 0, math.nan
    seen = CellVisibility(config.model.occupancy_resolution)
    history: list[dict] = []
    for step in bar:
        batch = torch.randint(0, origins.shape[0], (config.rays_per_step,), generator=generator)
        samples = march_field(field_model, origins[batch], dirs[batch], config.samples_per_ray, generator)
        weights = compositing_weights(samples)
        rgb = accumulate(weights[:, None] * samples.rgb, samples.ray_ids, config.rays_per_step)
        acc = accumulate(weights, samples.ray_ids, config.rays_per_step)
        background = torch.rand(config.rays_per_step, 3, generator=generator)
        alpha = target_alpha[batch]
        target = target_rgb[batch] * alpha[:, None] + (1 - alpha[:, None]) * background
        prediction = rgb + (1 - acc[:, None]) * background
        loss = F.mse_loss(prediction, target) + config.alpha_weight * F.mse_loss(acc, alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        seen.record(field_model, origins[batch], dirs[batch], samples, weights.detach())
        steps_done, loss_value = step + 1, float(loss.detach())
        if steps_done % config.occupancy_every == 0:
            previous = field_model.occupancy.clone()
            field_model.refresh_occupancy(hull)
            field_model.occupancy &= seen.still_needed(previous)
            seen = CellVisibility(config.model.occupancy_resolution)
            history.append(
                {"step": steps_done, "seconds": round(time.perf_counter() - start, 1), "loss": loss_value,
                 "occupied_cells": int(field_model.occupancy.sum())}
            )
        if steps_done % 10 == 0:
            bar.set_postfix(loss=f"{loss_value:.4f}", psnr=f"{-10 * math.log10(max(loss_value, 1e-10)):.1f}")
        if config.time_budget_s is not None and time.perf_counter() - start > config.time_budget_s:
            break
    previous = field_model.occupancy.clone()
    field_model.refresh_occupancy(hull)
    final = CellVisibility(config.model.occupancy_resolution)
    pick = torch.randperm(origins.shape[0], generator=generator)[: config.visibility_rays]
    with torch.no_grad():
        for chunk in pick.split(16384):
            samples = march_field(field_model, origins[chunk], dirs[chunk], config.samples_per_ray)
            final.record(field_model, origins[chunk], dirs[chunk], samples, compositing_weights(samples))
    field_model.occupancy &= final.still_needed(previous)
    stats = {
        "steps": steps_done,
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": loss_value,
        "occupied_cells": int(field_model.occupancy.sum()),
        "history": history,
    }
    return field_model, stats


def save_object_asset(field_model: ObjectField, meta: ObjectAssetMeta, out_dir: Path) -> Path:
    """Write ``asset.json`` and ``field.pt`` (half-precision weights, a plain state dict that
    loads with ``weights_only=True``) to ``out_dir``, atomically through a temporary folder."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if v.is_floating_point() and k != "aabb" else v)
        for k, v in field_model.state_dict().items()
    }
    torch.save(state, staging / ASSET_WEIGHTS)
    (staging / ASSET_META).write_text(json.dumps(asdict(meta), indent=2))
    if out_dir.exists():
        for child in out_dir.iterdir():
            child.unlink()
        out_dir.rmdir()
    staging.rename(out_dir)
    return out_dir


def _with_trained_hash_grid(config: ObjectFieldConfig, state: dict, weights_path: Path) -> ObjectFieldConfig:
    """``config`` set to the hash grid its saved weights come from: tiny-cuda-nn and the pure-torch
    grid store their weights differently, so a torch-trained asset loads on the torch grid
    anywhere, and a tiny-cuda-nn one only where tiny-cuda-nn runs (else a clear error)."""
    if config.encoding != "hash":
        return config
    if not any("tcnn_encoding" in key for key in state):
        return replace(config, hash_backend="torch")
    reason = unavailable_reason(TCNN_HASH_GRID)
    if reason is not None:
        raise AssetError(f"{weights_path}: trained on the {TCNN_HASH_GRID.name}, which cannot run here ({reason}); "
                         "load it on a CUDA machine with tinycudann, or train the asset again with hash_backend 'torch'")
    return replace(config, hash_backend="cuda")


def load_object_asset(asset_dir: Path, device: str | torch.device = "cpu") -> tuple[ObjectField, ObjectAssetMeta]:
    """Load an asset written by :func:`save_object_asset`."""
    asset_dir = Path(asset_dir)
    meta_path, weights_path = asset_dir / ASSET_META, asset_dir / ASSET_WEIGHTS
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise AssetError(f"{path}: missing (an object asset is a folder with {ASSET_META} and {ASSET_WEIGHTS})")
    try:
        meta = ObjectAssetMeta(**json.loads(meta_path.read_text()))
        config = ObjectFieldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta.model.items()})
    except (json.JSONDecodeError, TypeError) as error:
        raise AssetError(f"{meta_path}: not a valid asset description ({error})") from error
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise AssetError(f"{weights_path}: corrupt or not a nerfsim field ({error})") from error
    field_model = ObjectField(_with_trained_hash_grid(config, state, weights_path), torch.tensor(meta.aabb))
    try:
        field_model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as error:
        raise AssetError(f"{weights_path}: weights do not match {meta_path} ({error})") from error
    return field_model.to(device).eval(), meta
