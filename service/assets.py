"""Building nerfsim object assets: from a posed image set (train an object NeRF or a splat) or from a
textured mesh (render a posed image set first), and splats baked from a NeRF. Shared by the CLI
and the asset jobs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from renderer.mesh import TexturedMesh
    from renderer.posed_images import PosedImages


def train_asset(posed_dir: Path, out_dir: Path, name: str, steps: int, minutes: float, seed: int = 0,
                model: dict[str, Any] | None = None, trainer: dict[str, Any] | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Train an object NeRF on the posed image set in ``posed_dir`` and save it as a nerfsim
    asset in ``out_dir`` (atomically); returns the training statistics, with the held-out PSNR
    when the set has test views."""
    from renderer.object_field import ObjectAssetMeta, ObjectFieldConfig
    from renderer.posed_images import load_posed_images
    from renderer.train_object import ObjectTrainerConfig, render_views, save_object_asset, train_object_field

    images = load_posed_images(posed_dir, "train")
    model_config = ObjectFieldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in (model or {}).items()})
    config = ObjectTrainerConfig(model=model_config, steps=steps, time_budget_s=minutes * 60, seed=seed,
                                 **(trainer or {}))
    field, stats = train_object_field(images, config, progress=progress)
    _score_held_out(stats, posed_dir, lambda views: render_views(field, views, config.samples_per_ray))
    stats.pop("history", None)
    meta = ObjectAssetMeta(name=name, aabb=field.aabb.tolist(), model=asdict(config.model), training=stats)
    save_object_asset(field, meta, out_dir)
    return stats


def train_splat_asset(posed_dir: Path, out_dir: Path, name: str, steps: int, minutes: float, seed: int = 0,
                      splat: dict[str, Any] | None = None, mesh: TexturedMesh | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Train a splat on the posed image set in ``posed_dir`` (the views a NeRF asset trains on)
    and save it as a splat asset in ``out_dir``; the training statistics, with the held-out PSNR
    when the set has test views. ``mesh``: the mesh the views were rendered from (the splat then
    starts on its surface rather than on the masks' visual hull)."""
    import torch

    from renderer.posed_images import load_posed_images
    from renderer.splat_asset import save_splat_asset
    from renderer.splat_init import gaussians_from_points, mesh_surface_points
    from renderer.train_splat import SplatTrainConfig, render_splat_views, train_splat

    config = SplatTrainConfig(steps=steps, time_budget_s=minutes * 60, seed=seed, **(splat or {}))
    init = None
    if mesh is not None:
        points = mesh_surface_points(mesh, config.initial_gaussians, torch.Generator().manual_seed(seed))
        init = gaussians_from_points(*points, config.sh_degree)
    gaussians, stats = train_splat(load_posed_images(posed_dir, "train"), config, init=init, progress=progress)
    _score_held_out(stats, posed_dir, lambda views: render_splat_views(gaussians, views))
    source = {"trained_on": "posed images", "start": "mesh surface" if mesh is not None else "visual hull"}
    save_splat_asset(gaussians, name, out_dir, source=source, training=stats)
    return stats


def bake_splat_asset(nerf_path: Path, out_dir: Path, name: str, views: int, view_size: int, steps: int,
                     minutes: float, seed: int = 0, splat: dict[str, Any] | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Bake the NeRF at ``nerf_path`` (a nerfsim asset folder or a nerfstudio ``config.yml``) into
    a splat asset in ``out_dir`` from ``views`` renders of ``view_size`` px; the statistics."""
    from renderer.scene_spec import load_object
    from renderer.splat_asset import save_splat_asset
    from renderer.splat_bake import BakeConfig, bake_nerf
    from renderer.train_splat import SplatTrainConfig

    train = SplatTrainConfig(steps=steps, time_budget_s=minutes * 60, seed=seed, **(splat or {}))
    gaussians, stats = bake_nerf(load_object(nerf_path), BakeConfig(views=views, size=view_size, train=train, seed=seed),
                                 progress=progress)
    save_splat_asset(gaussians, name, out_dir, source={"baked_from": "nerf"}, training=stats)
    return stats


def _score_held_out(stats: dict[str, Any], posed_dir: Path, render: Callable[[PosedImages], tuple[Tensor, Tensor]]) -> None:
    """Add the held-out PSNR on white and the number of held-out views to ``stats`` when the
    posed set in ``posed_dir`` has test views; ``render`` gives an asset's premultiplied colour
    and opacity at a set's cameras."""
    from renderer.posed_images import PosedImageError, load_posed_images
    from renderer.train_object import psnr_on_white

    try:
        held_out = load_posed_images(posed_dir, "test")
    except PosedImageError:
        return
    stats["held_out_psnr_db"] = round(psnr_on_white(*render(held_out), held_out), 2)
    stats["held_out_views"] = int(held_out.c2w.shape[0])
