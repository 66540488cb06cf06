"""Building nerfsim object assets: from a posed image set (train an object NeRF) or from a
textured mesh (render a posed image set first). Shared by the CLI and the asset jobs."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any


def train_asset(posed_dir: Path, out_dir: Path, name: str, steps: int, minutes: float, seed: int = 0,
                model: dict[str, Any] | None = None, trainer: dict[str, Any] | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Train an object NeRF on the posed image set in ``posed_dir`` and save it as a nerfsim
    asset in ``out_dir`` (atomically); returns the training statistics, with the held-out PSNR
    when the set has test views."""
    from renderer.object_field import ObjectAssetMeta, ObjectFieldConfig
    from renderer.posed_images import PosedImageError, load_posed_images
    from renderer.train_object import (
        ObjectTrainerConfig,
        psnr_on_white,
        render_views,
        save_object_asset,
        train_object_field,
    )

    images = load_posed_images(posed_dir, "train")
    model_config = ObjectFieldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in (model or {}).items()})
    config = ObjectTrainerConfig(model=model_config, steps=steps, time_budget_s=minutes * 60, seed=seed,
                                 **(trainer or {}))
    field, stats = train_object_field(images, config, progress=progress)
    try:
        held_out = load_posed_images(posed_dir, "test")
    except PosedImageError:
        held_out = None
    if held_out is not None:
        rgb, alpha = render_views(field, held_out, config.samples_per_ray)
        stats["held_out_psnr_db"] = round(psnr_on_white(rgb, alpha, held_out), 2)
        stats["held_out_views"] = int(held_out.c2w.shape[0])
    stats.pop("history", None)
    meta = ObjectAssetMeta(name=name, aabb=field.aabb.tolist(), model=asdict(config.model), training=stats)
    save_object_asset(field, meta, out_dir)
    return stats
