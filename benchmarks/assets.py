"""NeRF assets of YCB objects for the benchmarks, built once and cached.

For each object: render its textured mesh into a posed image set
(``renderer.mesh.build_posed_image_set``), train nerfsim's object NeRF on it at a small budget
(``renderer.train_object.train_object_field``) and save the asset. Everything lands under
``benchmarks/cache/ycb_assets/<budget>/<object>/`` (git-ignored); a budget's folder name spells
out its settings, so changing them builds new assets instead of reusing stale ones.

    python benchmarks/assets.py [--objects cracker_box mug ...] [--quick]

Needs ../shared/assets/ycb. Last line: ``assets=<n> built=<k> seconds=<s>``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from renderer.mesh import build_posed_image_set
from renderer.object_field import ObjectAssetMeta, ObjectField, ObjectFieldConfig
from renderer.posed_images import load_posed_images
from renderer.train_object import (
    ObjectTrainerConfig,
    load_object_asset,
    psnr_on_white,
    render_views,
    save_object_asset,
    train_object_field,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = next((p / "shared" for p in REPO.parents if (p / "shared").is_dir()), REPO.parent / "shared")
"""``shared/`` in the nearest folder above the repository that has one: ../shared beside the main
checkout, /work/shared from a worktree under /work/wt/ (the benchmarks' one rule for it)."""
YCB = SHARED / "assets" / "ycb"
CACHE = Path(__file__).resolve().parent / "cache" / "ycb_assets"
SHIFT_OBJECTS = ("cracker_box", "gelatin_box", "mustard_bottle", "mug", "pitcher_base", "power_drill")
"""Six YCB-Video objects, all without a symmetry about the vertical axis, so that their pose
(azimuth) shows in their images."""


@dataclass(frozen=True)
class AssetBudget:
    """How much work goes into each asset."""

    views: int = 80
    """Training views of the posed image set."""
    test_views: int = 8
    """Held-out views (for the PSNR in asset.json)."""
    size: int = 96
    """Side of the posed images, pixels."""
    spp: int = 16
    """Mesh-render samples per pixel."""
    train_steps: int = 600
    """Training steps per object (a step budget, not a time budget: on a shared machine a time
    budget gives assets whose quality depends on the load)."""
    rays_per_step: int = 2048
    hull_fit_steps: int = 300
    """Steps fitting the density to the visual hull before training (see ObjectTrainerConfig)."""
    visibility_rays: int = 100_000
    """Rays that prune never-seen occupancy cells after training (see ObjectTrainerConfig)."""
    samples_per_ray: int = 128
    plane_resolutions: tuple[int, ...] = (32, 64, 128)
    """Triplane resolutions of the object field (see ObjectFieldConfig)."""
    plane_components: int = 16
    hidden_dim: int = 64

    @property
    def tag(self) -> str:
        planes = "-".join(map(str, self.plane_resolutions))
        return (f"v{self.views}_s{self.size}_spp{self.spp}_n{self.train_steps}_r{self.rays_per_step}"
                f"_h{self.hull_fit_steps}_vis{self.visibility_rays}_spr{self.samples_per_ray}"
                f"_p{planes}x{self.plane_components}_w{self.hidden_dim}")

    def trainer_config(self) -> ObjectTrainerConfig:
        model = ObjectFieldConfig(plane_resolutions=self.plane_resolutions, plane_components=self.plane_components,
                                  hidden_dim=self.hidden_dim)
        return ObjectTrainerConfig(model=model, steps=self.train_steps, rays_per_step=self.rays_per_step,
                                   samples_per_ray=self.samples_per_ray, hull_fit_steps=self.hull_fit_steps,
                                   visibility_rays=self.visibility_rays)


FULL_BUDGET = AssetBudget()
QUICK_BUDGET = AssetBudget(views=48, test_views=4, size=80, spp=8, train_steps=150, rays_per_step=1024,
                           hull_fit_steps=100, visibility_rays=20_000, samples_per_ray=64,
                           plane_resolutions=(16, 32, 64), plane_components=8, hidden_dim=32)
"""Small fields for 64 px benchmark images: a few minutes per object on a loaded 2-core machine."""


def asset_dir(name: str, budget: AssetBudget) -> Path:
    return CACHE / budget.tag / name


def build_asset(name: str, budget: AssetBudget, progress: bool = True, mesh: Path | None = None) -> Path:
    """The asset of YCB object ``name`` (or of the OBJ ``mesh``, cached under ``name``) at
    ``budget``, built unless already cached."""
    out = asset_dir(name, budget)
    if (out / "asset.json").is_file():
        return out
    mesh = mesh or YCB / name / "textured.obj"
    if not mesh.is_file():
        raise FileNotFoundError(f"{mesh}: YCB mesh not found (the benchmarks need ../shared/assets/ycb)")
    views = CACHE / budget.tag / f"{name}_views"
    if not (views / "transforms.json").is_file():
        build_posed_image_set(mesh, views, num_views=budget.views, num_test_views=budget.test_views,
                              size=budget.size, spp=budget.spp, progress=progress)
    config = budget.trainer_config()
    field, stats = train_object_field(load_posed_images(views, "train"), config, progress=progress)
    held_out = load_posed_images(views, "test")
    rgb, alpha = render_views(field, held_out, config.samples_per_ray)
    stats = {k: v for k, v in stats.items() if k != "history"}
    stats["held_out_psnr_db"] = round(psnr_on_white(rgb, alpha, held_out), 2)
    stats["budget"] = asdict(budget)
    meta = ObjectAssetMeta(name=name, aabb=field.aabb.tolist(), model=asdict(config.model), training=stats)
    return save_object_asset(field, meta, out)


def load_assets(names: tuple[str, ...], budget: AssetBudget, progress: bool = True) -> list[ObjectField]:
    """Object fields of ``names`` (built first where missing), frozen, in class order."""
    fields = []
    for name in names:
        field, _ = load_object_asset(build_asset(name, budget, progress))
        fields.append(field.requires_grad_(False))
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", nargs="+", default=list(SHIFT_OBJECTS))
    parser.add_argument("--quick", action="store_true", help="the smaller budget of shift.py --quick")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = QUICK_BUDGET if args.quick else FULL_BUDGET
    start = time.perf_counter()
    built = 0
    for name in args.objects:
        cached = (asset_dir(name, budget) / "asset.json").is_file()
        path = build_asset(name, budget)
        built += not cached
        training = json.loads((path / "asset.json").read_text())["training"]
        print(f"{name}: {path} psnr={training.get('held_out_psnr_db')} dB steps={training.get('steps')}")
    print(f"assets={len(args.objects)} built={built} seconds={time.perf_counter() - start:.0f}")


if __name__ == "__main__":
    main()
