"""How faithful a NeRF asset is to its mesh: held-out PSNR and box agreement, on cracker_box.

1. Render the YCB mesh into a posed image set (mitsuba), 100 training + 10 held-out views.
2. Train nerfsim's object NeRF on it within a time budget (default 15 minutes, 2 threads).
3. Held-out PSNR at 128 px (both composited over white) against the mesh renders.
4. Random scenes rendered by the NeRF scene renderer and by the mesh scene renderer at the same
   poses: mean IoU of the object boxes.

    python benchmarks/asset_quality.py [--object cracker_box] [--minutes 15] [--quick]
    python benchmarks/asset_quality.py --asset renderer/demo_assets/cracker_box   (no training)

Needs ../shared/assets/ycb. Last line: ``psnr_db=<x> box_iou=<y> train_minutes=<z>``.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (busy-waiting threads are ruinous on a shared
# machine); must be set before torch starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torchvision.ops import box_iou

from benchmarks.assets import SHARED
from renderer.mesh import MeshSceneRenderer, MeshSceneRendererConfig, build_posed_image_set, load_textured_mesh
from renderer.object_field import ObjectAssetMeta
from renderer.posed_images import load_posed_images
from renderer.scene_renderer import SceneRenderer, SceneRendererConfig
from renderer.scene_types import SceneParams
from renderer.train_object import (
    ObjectTrainerConfig,
    load_object_asset,
    psnr_on_white,
    render_views,
    save_object_asset,
    train_object_field,
)

ASSETS = SHARED / "assets" / "ycb"
CACHE = Path(__file__).resolve().parent / "cache"


def random_single_object_scenes(count: int, seed: int) -> SceneParams:
    g = torch.Generator().manual_seed(seed)
    params = SceneParams.single([0], [0.0], [0.0], [0.5])
    rows = {
        "object_ids": torch.zeros(count, 1, dtype=torch.long),
        "present": torch.ones(count, 1, dtype=torch.bool),
        "azimuth": torch.rand(count, 1, generator=g) * 2 * math.pi,
        "elevation": torch.deg2rad(torch.rand(count, 1, generator=g) * 90 - 20),
        "roll": torch.deg2rad(torch.rand(count, 1, generator=g) * 40 - 20),
        "distance": 0.45 + 0.35 * torch.rand(count, 1, generator=g),
        "offset": (torch.rand(count, 1, 2, generator=g) - 0.5) * 0.6,
        "exposure": torch.zeros(count, 1),
        "color_gain": torch.ones(count, 1, 3),
        "background_ids": torch.full((count,), -1),
        "background_crop": params.background_crop.expand(count, 3),
        "background_color": torch.ones(count, 3),
    }
    return SceneParams(**rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--object", default="cracker_box")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="2-minute training, 10 scenes (a smoke run)")
    parser.add_argument("--asset", type=Path, help="evaluate this trained asset instead of training one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    minutes, scenes = (2.0, 10) if args.quick else (args.minutes, args.scenes)

    mesh_path = ASSETS / args.object / "textured.obj"
    views = CACHE / f"{args.object}_views"
    if not (views / "transforms.json").exists():
        build_posed_image_set(mesh_path, views, num_views=100, num_test_views=10, size=128, spp=64)
    train, held_out = load_posed_images(views, "train"), load_posed_images(views, "test")

    config = ObjectTrainerConfig(steps=100_000, time_budget_s=minutes * 60)
    if args.asset:
        field, meta = load_object_asset(args.asset)
        stats = meta.training
        train_minutes = stats.get("seconds", math.nan) / 60
    else:
        start = time.perf_counter()
        field, stats = train_object_field(train, config, progress=True)
        train_minutes = (time.perf_counter() - start) / 60
    rgb, alpha = render_views(field, held_out, config.samples_per_ray)
    psnr = psnr_on_white(rgb, alpha, held_out)
    if not args.asset:
        save_object_asset(
            field,
            ObjectAssetMeta(name=args.object, aabb=field.aabb.tolist(), model=asdict(config.model),
                            training={**{k: v for k, v in stats.items() if k != "history"}, "held_out_psnr_db": psnr}),
            CACHE / f"{args.object}_asset",
        )

    params = random_single_object_scenes(scenes, seed=1)
    nerf = SceneRenderer(SceneRendererConfig(min_visible=0.0), [field])
    mesh = MeshSceneRenderer(MeshSceneRendererConfig(min_visible=0.0), [load_textured_mesh(mesh_path)])
    with torch.no_grad():
        nerf_boxes = nerf.render(params, 128).boxes[:, 0]
    mesh_boxes = mesh.render(params, 128).boxes[:, 0]
    ious = box_iou(nerf_boxes, mesh_boxes).diagonal()
    result = {
        "object": args.object,
        "train": {k: v for k, v in stats.items() if k != "history"},
        "train_minutes": round(train_minutes, 2),
        "held_out_psnr_db": round(psnr, 2),
        "box_iou_mean": round(float(ious.mean()), 4),
        "box_iou_min": round(float(ious.min()), 4),
        "scenes": scenes,
        "threads": args.threads,
    }
    print(json.dumps(result, indent=2))
    print(f"psnr_db={psnr:.2f} box_iou={float(ious.mean()):.3f} train_minutes={train_minutes:.1f}")


if __name__ == "__main__":
    main()
