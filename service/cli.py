"""The ``nerfsim`` command line.

    nerfsim asset from-mesh MESH --out DIR     posed image set from a textured mesh
    nerfsim asset train DIR --out ASSET        object NeRF from a posed image set
    nerfsim render --scene demo --num N --size S --out DIR
                                               labelled dataset (COCO + YOLO + card)

Heavy libraries are imported inside the commands, so ``nerfsim --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _offline_environment() -> None:
    """No downloads at run time: Ultralytics settings live in the project, not in ~/.config."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path.cwd() / ".yolo"))


def cmd_asset_from_mesh(args: argparse.Namespace) -> None:
    from renderer.mesh import build_posed_image_set

    path = build_posed_image_set(
        args.mesh, args.out, num_views=args.views, num_test_views=args.test_views, size=args.size,
        fov_deg=args.fov, spp=args.spp, seed=args.seed, progress=True,
    )
    print(f"posed image set: {path}")


def cmd_asset_train(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from renderer.object_field import ObjectAssetMeta
    from renderer.posed_images import PosedImageError, load_posed_images
    from renderer.train_object import (
        ObjectTrainerConfig,
        psnr_on_white,
        render_views,
        save_object_asset,
        train_object_field,
    )

    images = load_posed_images(args.dir, "train")
    config = ObjectTrainerConfig(steps=args.steps, time_budget_s=args.minutes * 60, seed=args.seed)
    field, stats = train_object_field(images, config, progress=True)
    try:
        held_out = load_posed_images(args.dir, "test")
    except PosedImageError:
        held_out = None
    if held_out is not None:
        rgb, alpha = render_views(field, held_out, config.samples_per_ray)
        stats["held_out_psnr_db"] = round(psnr_on_white(rgb, alpha, held_out), 2)
        stats["held_out_views"] = int(held_out.c2w.shape[0])
    stats.pop("history", None)
    name = args.name or Path(args.dir).resolve().name
    meta = ObjectAssetMeta(name=name, aabb=field.aabb.tolist(), model=asdict(config.model), training=stats)
    save_object_asset(field, meta, args.out)
    print(json.dumps({"asset": str(args.out), **stats}, indent=2))


def cmd_render(args: argparse.Namespace) -> None:
    import torch

    from optimizer.dataset import render_dataset
    from optimizer.psi import Psi, PsiConfig
    from renderer.scene_renderer import SceneRenderer, SceneRendererConfig
    from renderer.scene_spec import load_scene, read_scene_spec

    torch.set_num_threads(args.threads)
    spec = read_scene_spec(args.scene)
    fields, backgrounds = load_scene(spec)
    renderer = SceneRenderer(SceneRendererConfig(fov_deg=spec.fov_deg), fields, backgrounds)
    psi = Psi.uniform(
        PsiConfig(
            num_classes=len(fields),
            max_objects=args.max_objects,
            num_backgrounds=len(backgrounds),
            elevation_range_deg=(-20.0, 70.0),
            distance_median=args.distance,
        )
    )
    out = render_dataset(renderer, psi, args.num, args.size, Path(args.out), spec.class_names, seed=args.seed)
    print(f"dataset: {out} ({args.num} images; images/, annotations.json, labels/, data.yaml, card.md)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nerfsim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    asset = commands.add_parser("asset", help="build object assets").add_subparsers(dest="asset_command", required=True)
    from_mesh = asset.add_parser("from-mesh", help="render a textured mesh (OBJ+MTL+texture) into a posed image set")
    from_mesh.add_argument("mesh", type=Path)
    from_mesh.add_argument("--out", type=Path, required=True)
    from_mesh.add_argument("--views", type=int, default=100, help="training views")
    from_mesh.add_argument("--test-views", type=int, default=10, help="held-out views")
    from_mesh.add_argument("--size", type=int, default=128)
    from_mesh.add_argument("--fov", type=float, default=40.0)
    from_mesh.add_argument("--spp", type=int, default=64)
    from_mesh.add_argument("--seed", type=int, default=0)
    from_mesh.set_defaults(run=cmd_asset_from_mesh)

    train = asset.add_parser("train", help="train an object NeRF from a posed image set (transforms.json)")
    train.add_argument("dir", type=Path)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--name", help="class name (default: the folder name)")
    train.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    train.add_argument("--steps", type=int, default=5000, help="at most this many steps")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(run=cmd_asset_train)

    render = commands.add_parser("render", help="render a labelled dataset of a scene")
    render.add_argument("--scene", default="demo", help="'demo' or a scene.json")
    render.add_argument("--num", type=int, default=100)
    render.add_argument("--size", type=int, default=128)
    render.add_argument("--out", type=Path, required=True)
    render.add_argument("--max-objects", type=int, default=3)
    render.add_argument("--distance", type=float, default=0.6, help="median object distance, metres")
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    render.set_defaults(run=cmd_render)
    return parser


def main(argv: list[str] | None = None) -> int:
    _offline_environment()
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ValueError as error:  # every input error of nerfsim is a ValueError subclass naming the file
        print(f"nerfsim: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
