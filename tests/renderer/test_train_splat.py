"""Splats trained from posed images and baked from NeRF assets, splat asset folders, and splat
objects listed in a scene.json (tiny: a few hundred Gaussians, ~50 steps, 32 px)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from plyfile import PlyData, PlyElement

from optimizer.priors import occupied_points
from renderer.posed_images import load_posed_images
from renderer.scene_renderer import SceneRenderer, SceneRendererConfig
from renderer.scene_spec import load_scene, read_scene_spec
from renderer.scene_types import SceneParams
from renderer.splat import SplatError, SplatObject
from renderer.splat_asset import import_splat, load_splat_asset, save_splat_asset
from renderer.splat_bake import BakeConfig, bake_nerf
from renderer.splat_density import DensityControl
from renderer.splat_ply import save_splat_ply
from renderer.train_object import psnr_on_white
from renderer.splat_init import gaussians_from_points
from renderer.train_splat import SplatTrainConfig, camera_of, render_splat_views, train_splat
from tests.renderer.splats import random_gaussians

TINY = SplatTrainConfig(steps=50, initial_gaussians=300, densify_from=20, densify_every=20)


@pytest.fixture(scope="module")
def trained_splat(box_views: Path):
    return train_splat(load_posed_images(box_views, "train"), TINY, progress=False)


def test_training_improves_the_held_out_views(box_views: Path, trained_splat) -> None:
    gaussians, stats = trained_splat
    held_out = load_posed_images(box_views, "test")
    start = train_splat(load_posed_images(box_views, "train"), SplatTrainConfig(steps=0, initial_gaussians=300),
                        progress=False)[0]
    before = psnr_on_white(*render_splat_views(start, held_out), held_out)
    after = psnr_on_white(*render_splat_views(gaussians, held_out), held_out)
    assert after > before + 1.0 and after > 19.0, (before, after)
    assert stats["steps"] == 50 and stats["gaussians"] == gaussians.num >= 100
    # The splat sits where the box is (HALF = 0.05, 0.1, 0.03 in the object frame).
    half = torch.tensor([0.05, 0.1, 0.03])
    low, high = gaussians.means.quantile(0.02, dim=0), gaussians.means.quantile(0.98, dim=0)
    assert (low > -half - 0.015).all() and (high < half + 0.015).all() and (high - low > half).all()


def test_density_control_clones_small_splits_large_and_prunes_transparent() -> None:
    start = gaussians_from_points(torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1], [0.1, 0.1, 0.1]]),
                                  torch.full((5, 3), 0.5), sh_degree=1, opacity=0.5)
    start.log_scales[:] = math.log(0.01)  # small: cloned
    start.log_scales[1] = math.log(0.05)  # large: split
    start.opacity_logits[4] = -10.0  # transparent: pruned
    config = SplatTrainConfig(grad_threshold=1.0, dense_fraction=0.1, prune_opacity=0.01)
    control = DensityControl(start, config, extent=0.2)
    control.gaussians().means.sum().backward()  # a gradient for the optimiser's moments
    control.optimizer.step()
    control.grad_sum = torch.tensor([2.0, 2.0, 0.5, 0.0, 0.0])
    control.grad_count = torch.ones(5)
    before = control.params["means"].detach().clone()
    control.densify_and_prune(torch.Generator().manual_seed(0))
    after = control.gaussians()
    # Kept 0, 2, 3 (1 is split, 4 pruned), then the clone of 0 and two halves of 1.
    assert after.num == 6
    assert torch.equal(after.means[:4], before[[0, 2, 3, 0]])
    halves = after.log_scales[4:].exp()
    assert torch.allclose(halves, torch.full_like(halves, 0.05 / 1.6), rtol=0.02)  # after one Adam step
    assert control.optimizer.state[control.params["means"]]["exp_avg"].shape == (6, 3)
    assert all(p.is_leaf and p.requires_grad for p in control.params.values())


def test_off_centre_cameras_are_refused(box_views: Path) -> None:
    images = load_posed_images(box_views, "train")
    assert camera_of(images) == pytest.approx(40.0)
    images.cx += 3
    with pytest.raises(SplatError, match="principal point"):
        camera_of(images)


def test_a_nerf_asset_bakes_into_a_splat(trained_box) -> None:
    field, _ = trained_box
    config = BakeConfig(views=12, size=32, samples_per_ray=64, candidate_points=20000, train=TINY)
    gaussians, stats = bake_nerf(field, config, progress=False)
    assert stats["render_psnr_db"] > 18.0 and stats["baked_views"] == 12
    low, high = gaussians.means.quantile(0.02, dim=0), gaussians.means.quantile(0.98, dim=0)
    assert (low > field.aabb[0] - 0.015).all() and (high < field.aabb[1] + 0.015).all()


def test_a_splat_asset_round_trips_and_a_scene_lists_it(tmp_path: Path, trained_splat, box_asset: Path) -> None:
    gaussians, stats = trained_splat
    meta = save_splat_asset(gaussians, "box", tmp_path / "splat_box", training=stats)
    loaded, loaded_meta = load_splat_asset(tmp_path / "splat_box")
    assert loaded_meta == meta and meta.num_gaussians == gaussians.num
    assert torch.allclose(loaded.means, gaussians.means)
    scene = {"name": "mixed", "objects": [{"name": "splat_box", "path": "splat_box"}, {"name": "nerf_box", "path": str(box_asset)}]}
    (tmp_path / "scene.json").write_text(json.dumps(scene))
    fields, backgrounds = load_scene(read_scene_spec(tmp_path))
    assert isinstance(fields[0], SplatObject) and not isinstance(fields[1], SplatObject)
    renderer = SceneRenderer(SceneRendererConfig(), fields, backgrounds)
    params = SceneParams.single([0, 1], [20.0, 0.0], [10.0, 5.0], [0.6, 0.8],
                                offset=[[-0.4, 0.0], [0.4, 0.0]])
    batch = renderer.render(params, 32)
    assert batch.keep[0].all() and (batch.masks[0].flatten(1).sum(-1) > 10).all()
    assert len(occupied_points(fields[0])) >= 10  # the loop's priors and poses read a splat's opaque centres


def test_a_captured_ply_is_put_into_the_object_frame(tmp_path: Path) -> None:
    g = random_gaussians(60, degree=0, dtype=torch.float32)
    g.means += torch.tensor([1.0, 2.0, 3.0])
    save_splat_ply(g, tmp_path / "capture.ply")
    ply = PlyData.read(str(tmp_path / "capture.ply"))
    PlyData([PlyElement.describe(ply["vertex"].data, "vertex")], comments=["Vertical Axis: z"]).write(str(tmp_path / "z.ply"))
    meta = import_splat(tmp_path / "z.ply", "cap", tmp_path / "asset", scale=2.0)
    assert meta.source["up_axis"] == "z" and meta.source["scale"] == 2.0
    loaded, _ = load_splat_asset(tmp_path / "asset")
    centre = loaded.aabb().mean(dim=0)
    assert centre.abs().max() < 1e-4  # origin at the box centre
    size = g.aabb()[1] - g.aabb()[0]
    assert torch.allclose(loaded.aabb()[1] - loaded.aabb()[0], 2 * size[[0, 2, 1]], atol=1e-4)  # z up -> y up
    (tmp_path / "scene.json").write_text(json.dumps({"objects": [{"name": "cap", "path": "z.ply"}]}))
    fields, _ = load_scene(read_scene_spec(tmp_path))
    assert isinstance(fields[0], SplatObject)


def test_mesh_surface_points_lie_on_the_surface_with_its_texture(tmp_path: Path) -> None:
    from renderer.mesh import load_textured_mesh
    from renderer.splat_init import mesh_surface_points
    from tests.renderer.meshes import CYAN, HALF, write_box

    mesh = load_textured_mesh(write_box(tmp_path / "box"))
    points, colours = mesh_surface_points(mesh, 2000, torch.Generator().manual_seed(0))
    half = torch.tensor(HALF)
    on_a_face = ((points.abs() - half).abs() < 1e-5).any(dim=-1)
    assert on_a_face.all() and (points.abs() <= half + 1e-5).all()
    top = points[:, 1] > half[1] - 1e-5  # the file's +z face: one colour
    assert top.sum() > 50 and torch.allclose(colours[top], torch.tensor(CYAN), atol=0.01)
    # Triangles are drawn by area: the top (0.1 x 0.06) holds about its share of the surface.
    areas = 2 * (0.1 * 0.2 + 0.1 * 0.06 + 0.2 * 0.06)
    assert abs(float(top.float().mean()) - 0.1 * 0.06 / areas) < 0.03
