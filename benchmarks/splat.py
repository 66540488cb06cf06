"""One object as a NeRF and as a 3D Gaussian splat: render speed and held-out PSNR, in one run.

The object is a YCB mesh (``../shared/assets/ycb``; else a generated textured box). Its NeRF
asset is built as ``benchmarks/assets.py`` does (and shares its cache). Its splat is trained on
the same posed views by ``renderer.train_splat`` (:data:`SPLAT_TRAINING` steps). Render speed
is measured with that trained splat: both renderers draw the object alone
from the same random views, interleaved, on one thread, at 128 px and at 640x480 (fov 40 degrees across the longer side); the NeRF through
``march_field`` and the compositing of ``renderer.raymarch``, the splat through
``render_gaussians`` (the torch rasteriser on CPU).

    python benchmarks/splat.py [--quick] [--object cracker_box]

Last line: ``splat_render_over_nerf=<images/s ratio at 640x480> splat_psnr_db=<x> nerf_psnr_db=<y>``.

Measured 2026-12-06, 2 shared cores, contended (load 3-5), 1 thread, cracker_box, 20000
Gaussians of the occupancy stand-in for the speed:

- full budget with the trained splat after the rasteriser speed-up (issue 26, branch
  splatspeed, one run, load ~2): splat 29.83 dB held-out (3000 steps, 208 s, 22392 Gaussians)
  vs NeRF 28.27 dB; 640x480 NeRF 0.95 images/s, splat 4.86 (**5.10x**; 4.51x in the run
  before the speed-up, NeRF 0.70, splat 3.17); 128 px 35.7 vs 42.5 (1.19x). Same process,
  min of 4 passes over the 8 views at 640x480: ``render_gaussians`` 256 -> 182 ms per image.
- full budget with the trained splat (branch splatfit, one run): splat 29.85 dB held-out
  (3000 steps, 379 s, 22411 Gaussians) vs NeRF 28.27 dB; 640x480 NeRF 0.60 images/s, splat
  3.98 (6.59x); 128 px 25.2 vs 38.1 (1.51x). ``--quick``: splat 25.25 dB (1000 steps, 45 s,
  5715 Gaussians) vs NeRF 20.36 dB, 640x480 ratio 2.82.

- full budget (last run, final code): 640x480 NeRF 0.46 images/s, splat 3.22 images/s (7.1x;
  6.4x in the run before); 128 px NeRF 16.9, splat 22.9 (1.35x); NeRF held-out PSNR 28.27 dB;
  stand-in splat 17.35 dB (untrained).
- ``--quick`` (smaller, cheaper NeRF): 640x480 ratio 2.0-3.0 over several runs, 128 px 0.3-0.5
  (the splat's cost follows its (Gaussian, pixel) pairs; the 0.3 px low-pass gives every
  Gaussian ~8 pixels even at 128 px, while the NeRF marches only the few rays that hit it).
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (busy-waiting threads are ruinous on a shared
# machine); must be set before torch starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import math
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.assets import CACHE, FULL_BUDGET, QUICK_BUDGET, YCB, AssetBudget, build_asset
from renderer.camera import camera_ray_directions, object_to_camera
from renderer.object_field import ObjectField
from renderer.posed_images import PosedImages, load_posed_images
from renderer.raymarch import accumulate, compositing_weights, march_field
from renderer.splat import Gaussians, render_gaussians
from renderer.train_object import load_object_asset, psnr_on_white, render_views
from renderer.train_splat import SplatTrainConfig, render_splat_views, train_splat

FOV_DEG = 40.0


def object_asset(name: str, budget: AssetBudget) -> tuple[Path, Path]:
    """(asset folder, posed-views folder) of the YCB object ``name``, or of a generated box."""
    mesh = None
    if not (YCB / name / "textured.obj").is_file():
        from tests.renderer.meshes import write_box

        name, mesh = "generated_box", write_box(Path(tempfile.mkdtemp()) / "box")
    return build_asset(name, budget, mesh=mesh), CACHE / budget.tag / f"{name}_views"


SPLAT_TRAINING = {True: dict(steps=1000, initial_gaussians=5000), False: dict(steps=3000, initial_gaussians=20_000)}
"""renderer.train_splat.SplatTrainConfig settings of the benchmark's splat, --quick or not (a step
budget, as the NeRF's: on a shared machine a time budget gives a load-dependent splat)."""


def trained_splat(views: Path, quick: bool) -> Gaussians:
    """The splat ``renderer.train_splat`` trains on the NeRF's training views (one view per step,
    L1 + SSIM on random backgrounds, clone / split / prune)."""
    gaussians, stats = train_splat(load_posed_images(views, "train"), SplatTrainConfig(**SPLAT_TRAINING[quick]))
    print(f"splat training: {stats}")
    return gaussians


def splat_psnr(gaussians: Gaussians, images: PosedImages) -> float:
    """PSNR over white of the splat at the held-out cameras (centred square pinhole images)."""
    return psnr_on_white(*render_splat_views(gaussians, images), images)


@torch.no_grad()
def render_nerf(field: ObjectField, rotation: torch.Tensor, translation: torch.Tensor, size: tuple[int, int],
                samples_per_ray: int) -> torch.Tensor:
    """The NeRF alone through the same camera as ``render_gaussians`` (premultiplied rgb)."""
    height, width = size
    directions = camera_ray_directions(size, FOV_DEG).reshape(-1, 3)
    origins = (-rotation.T @ translation).expand(height * width, 3)
    samples = march_field(field, origins, directions @ rotation, samples_per_ray)
    weights = compositing_weights(samples)
    return accumulate(weights[:, None] * samples.rgb, samples.ray_ids, height * width)


def views(count: int, radius: float, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random views with the object's bounding sphere across about 60% of the shorter side."""
    g = torch.Generator().manual_seed(seed)
    # fov across the longer side: at 4:3 the shorter half-side is 0.75 tan(fov / 2).
    distance = radius / (0.6 * 0.75 * math.tan(math.radians(FOV_DEG) / 2))
    out = []
    for _ in range(count):
        azimuth, elevation = torch.rand(2, generator=g) * torch.tensor([2 * math.pi, 1.2]) - torch.tensor([0, 0.4])
        out.append(object_to_camera(azimuth, elevation, torch.tensor(0.0), torch.tensor(distance),
                                    torch.zeros(2), FOV_DEG))
    return out


def images_per_second(field: ObjectField, splat: Gaussians, size: tuple[int, int], poses: list, spr: int) -> tuple[float, float]:
    """(NeRF, splat) images/s over ``poses``, the two renderers interleaved pose by pose."""
    nerf_s = splat_s = 0.0
    for rotation, translation in poses:
        start = time.perf_counter()
        render_nerf(field, rotation, translation, size, spr)
        middle = time.perf_counter()
        with torch.no_grad():
            render_gaussians(splat, rotation, translation, FOV_DEG, size)
        nerf_s, splat_s = nerf_s + middle - start, splat_s + time.perf_counter() - middle
    return len(poses) / nerf_s, len(poses) / splat_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small asset budget and fewer views")
    parser.add_argument("--object", default="cracker_box")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = QUICK_BUDGET if args.quick else FULL_BUDGET
    asset, views_dir = object_asset(args.object, budget)
    field, _ = load_object_asset(asset)
    field.requires_grad_(False)
    spr = budget.samples_per_ray
    held_out = load_posed_images(views_dir, "test")
    with torch.no_grad():
        nerf_psnr = psnr_on_white(*render_views(field, held_out, spr), held_out)
    splat = trained_splat(views_dir, args.quick)
    splat_psnr_db = splat_psnr(splat, held_out)
    print(f"object={asset.name} gaussians={splat.num}")
    radius = float((field.aabb[1] - field.aabb[0]).norm() / 2)
    poses = views(3 if args.quick else 8, radius)
    ratios = {}
    for size in [(128, 128), (480, 640)]:
        nerf_ips, splat_ips = images_per_second(field, splat, size, poses, spr)
        ratios[size] = splat_ips / nerf_ips
        print(f"{size[1]}x{size[0]}: nerf_images_per_s={nerf_ips:.2f} splat_images_per_s={splat_ips:.2f} "
              f"ratio={ratios[size]:.2f}")
    print(f"splat_render_over_nerf={ratios[(480, 640)]:.2f} splat_psnr_db={splat_psnr_db:.2f} nerf_psnr_db={nerf_psnr:.2f}")


if __name__ == "__main__":
    main()
