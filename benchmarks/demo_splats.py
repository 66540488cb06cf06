"""The demo scene's NeRF objects baked into splats (``renderer.splat_bake``), built once and cached.

The render benchmark times the same three objects as NeRFs and as splats; baking the demo's
NeRF assets gives splats of the same objects in the same frames and sizes. Each lands under
``benchmarks/cache/demo_splats/<budget>/<object>/`` (git-ignored) as a splat asset, with a
``scene.json`` beside them that ``renderer.scene_spec`` reads like the demo's.

    python benchmarks/demo_splats.py [--quick]

Last line: ``splats=<n> built=<k> seconds=<s>``.

Measured 2026-12-06, 1 thread, 2 shared cores, contended: ``--quick`` 29-35 s per object (5,018-5,536
Gaussians, 27.5-36.0 dB PSNR on its own bake views); full budget 768-887 s per object
(20,015-22,608 Gaussians, 32.0-39.8 dB).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from renderer.scene_spec import load_object, read_scene_spec
from renderer.splat_asset import is_splat_asset, save_splat_asset
from renderer.splat_bake import BakeConfig, bake_nerf
from renderer.train_splat import SplatTrainConfig

CACHE = Path(__file__).resolve().parent / "cache" / "demo_splats"
BUDGETS = {
    True: BakeConfig(views=40, size=96, train=SplatTrainConfig(steps=800, initial_gaussians=5000)),
    False: BakeConfig(views=100, size=128, train=SplatTrainConfig(steps=3000, initial_gaussians=20_000)),
}
"""Bake settings, --quick or not (step budgets: on a shared machine a time budget gives splats
whose size depends on the load)."""


def budget_tag(config: BakeConfig) -> str:
    """Folder name spelling out a budget, so changed settings build new splats."""
    train = config.train
    return f"v{config.views}_s{config.size}_n{train.steps}_g{train.initial_gaussians}_sh{train.sh_degree}"


def demo_splat_scene(quick: bool, progress: bool = True) -> tuple[Path, int]:
    """The ``scene.json`` of the demo's objects as baked splats (built where missing) and how
    many were built now."""
    spec = read_scene_spec("demo")
    config = BUDGETS[quick]
    folder = CACHE / budget_tag(config)
    built = 0
    for obj in spec.objects:
        out = folder / obj.name
        if is_splat_asset(out):
            continue
        gaussians, stats = bake_nerf(load_object(obj.path), config, progress=progress)
        save_splat_asset(gaussians, obj.name, out, source={"baked_from": str(obj.path)}, training=stats)
        print(f"baked {obj.name}: {stats}")
        built += 1
    scene = {"name": "demo_splats", "fov_deg": spec.fov_deg,
             "objects": [{"name": o.name, "path": o.name} for o in spec.objects],
             "procedural_backgrounds": spec.procedural_backgrounds}
    (folder / "scene.json").write_text(json.dumps(scene, indent=2))
    return folder / "scene.json", built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small bake budget")
    parser.add_argument("--rebuild", action="store_true", help="bake again even where cached")
    args = parser.parse_args()
    if args.rebuild:
        shutil.rmtree(CACHE / budget_tag(BUDGETS[args.quick]), ignore_errors=True)
    start = time.perf_counter()
    scene, built = demo_splat_scene(args.quick)
    print(f"scene: {scene}")
    print(f"splats={len(read_scene_spec(scene).objects)} built={built} seconds={time.perf_counter() - start:.0f}")


if __name__ == "__main__":
    main()
