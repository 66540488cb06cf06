"""Resting poses from an object's geometry, rendering in them, and contact shadows."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from renderer.resting import RestingConfig, RestingError, field_pose_table, resting_poses
from renderer.scene_renderer import SceneRenderer, SceneRendererConfig
from renderer.scene_types import SceneParams
from renderer.splat import Gaussians, SplatObject
from renderer.shadows import ContactShadowConfig
from tests.renderer.fields import SolidBoxField
from tests.renderer.test_harvest import _scene_and_photos, renderers  # noqa: F401 (a fixture)

HALF = (0.05, 0.03, 0.02)


def box_points(half=HALF, n: int = 9) -> torch.Tensor:
    axis = torch.linspace(-1, 1, n)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    return grid * torch.tensor(half)


def test_box_rests_on_its_large_faces_most_often_and_keeps_the_canonical_share() -> None:
    table = resting_poses(box_points(), RestingConfig(canonical_pose_share=0.4))
    # Canonical pose: on its -y face (10 x 4 cm); the others: the two 10 x 6 faces first, then +y, then the small ends.
    assert table.num_poses == 5
    assert torch.allclose(table.heights, torch.tensor([0.02, 0.02, 0.03, 0.05, 0.05]))
    assert table.geometric[0] == table.geometric.max() and table.geometric[0] > table.canonical_geometric > table.geometric[3]
    total = table.geometric.sum() + table.canonical_geometric
    assert math.isclose(float(total), 1.0, rel_tol=1e-5)  # every face of a box is stable
    probs = table.choice_probs()
    assert probs[0] == 0.4 and math.isclose(sum(probs), 1.0, rel_tol=1e-6)
    assert probs[1] == max(probs[1:])


def test_a_splat_object_rests_on_the_faces_of_its_opaque_gaussians() -> None:
    """Splats have no occupancy grid: their (at least half) opaque Gaussians' centres are the
    points; a faint cloud far outside the box does not count."""
    points = box_points()
    faint = torch.randn(50, 3)  # metres away, nearly transparent
    n, m = len(points), len(faint)
    gaussians = Gaussians(
        means=torch.cat([points, faint]), log_scales=torch.full((n + m, 3), -6.0),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n + m, 1),
        opacity_logits=torch.cat([torch.full((n,), 4.0), torch.full((m,), -4.0)]), sh=torch.zeros(n + m, 1, 3),
    )
    table = field_pose_table(SplatObject(gaussians))
    assert torch.allclose(table.heights, resting_poses(points, RestingConfig()).heights, atol=0.003)


@pytest.mark.parametrize("padding", [0.0, 0.004])
def test_each_pose_touches_its_support_plane(padding: float) -> None:
    """The lowest point of the object in each pose is at the plane (plus the padding), its
    face normal points down and the centre of mass is above the plane."""
    points = box_points() @ torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.8, -0.6], [0.0, 0.6, 0.8]]).T  # tilted: canonical not a face
    table = resting_poses(points, padding=padding)
    assert math.isclose(table.canonical_height, float(-points[:, 1].min()) + padding, rel_tol=1e-6)
    assert table.canonical_geometric == 0.0
    for pose in range(table.num_poses):
        rested = points @ table.rotations[pose].T
        assert torch.allclose(rested[:, 1].min(), -table.heights[pose] + padding, atol=1e-6)
        assert table.com_heights[pose] > padding
        assert torch.allclose(table.rotations[pose] @ table.rotations[pose].T, torch.eye(3), atol=1e-6)


def test_unstable_faces_are_left_out() -> None:
    """A prism whose cross-section is a parallelogram leaning further than its width: on its
    bottom or top face its centre of mass is beyond the face's edge, so it tips over."""
    u, v, z = (torch.linspace(0, 1, 9) for _ in range(3))
    u, v, z = (t.reshape(-1) for t in torch.meshgrid(u, v, z, indexing="ij"))
    width, lean, height = 0.02, 0.08, 0.05
    points = torch.stack([u * width + v * lean, v * height, 0.04 * z], dim=-1)
    table = resting_poses(points - points.mean(0))
    normals = table.rotations.transpose(1, 2) @ torch.tensor([0.0, -1.0, 0.0])  # each pose's face, object frame
    assert table.canonical_geometric == 0.0  # its bottom (normal -y) is not stable
    assert table.num_poses >= 2 and (normals[:, 1].abs() < 0.99).all()  # nor its top
    assert torch.allclose(table.geometric.sum(), torch.tensor(1.0))


def test_bad_points_are_refused() -> None:
    with pytest.raises(RestingError, match="points"):
        resting_poses(torch.zeros(3, 3))
    with pytest.raises(RestingError, match="canonical_pose_share"):
        RestingConfig(canonical_pose_share=1.5)


def renderer(strength: float = 0.6) -> SceneRenderer:
    fields = [SolidBoxField(HALF, (0.9, 0.2, 0.2)), SolidBoxField((0.02, 0.06, 0.02), (0.2, 0.3, 0.9))]
    config = SceneRendererConfig(samples_per_ray=48, contact_shadows=ContactShadowConfig(strength=strength, light_jitter_deg=0.0))
    return SceneRenderer(config, fields, poses=[field_pose_table(f) for f in fields])


def scene(pose_ids: list[int] | None, elevation: float = 30.0) -> SceneParams:
    params = SceneParams.single([0, 1], [30, 200], [elevation, elevation], [0.5, 0.5], offset=[(-0.4, 0.1), (0.4, -0.1)],
                                background_color=(0.9, 0.9, 0.9))
    return params if pose_ids is None else dataclasses.replace(params, pose_ids=torch.tensor([pose_ids]))


def test_field_pose_table_of_a_field_touches_the_plane_with_its_surface() -> None:
    field = SolidBoxField(HALF, (1.0, 1.0, 1.0))
    table = field_pose_table(field)
    assert field_pose_table(field) is table  # cached
    # Opaque cells reach a little past the soft walls; the plane lies half a cell below the lowest centre.
    assert 0.02 < float(table.heights[0]) < 0.03 and 0.03 < table.canonical_height < 0.04
    assert table.num_poses == 5 and table.choice_probs()[0] == 1.0  # the default: objects stand as captured


@torch.no_grad()
def test_canonical_pose_renders_the_old_image_bit_for_bit_without_shadows() -> None:
    scenes = renderer(strength=0.0)
    old, new = scenes.render(scene(None), 48), scenes.render(scene([-1, -1]), 48)
    for name in ("rgb", "alpha", "masks", "depth", "boxes"):
        assert torch.equal(getattr(old, name), getattr(new, name)), name


@torch.no_grad()
def test_a_resting_pose_turns_the_object_over() -> None:
    """Seen from nearly straight above the support plane, the tall blue box (12 cm along y)
    standing shows its 4 cm top; lying on a side it shows its whole length."""
    scenes = renderer(strength=0.0)
    standing, lying = (scenes.render(scene([-1, pose], elevation=80), 64).boxes[0, 1] for pose in (-1, 0))
    assert (lying[2:] - lying[:2]).max() > 1.8 * (standing[2:] - standing[:2]).max()


@torch.no_grad()
@pytest.mark.parametrize("pose", [-1, 0, 2])
def test_the_shadow_lies_under_the_object(pose: int) -> None:
    """Looking down at 30 degrees, the contact shadow shows just below the object's lowest
    mask row (the part of the plane in front of its base), and nowhere far from it."""
    size = 64
    params = dataclasses.replace(scene([pose, pose]), present=torch.tensor([[True, False]]))
    shaded, plain = renderer(0.6).render(params, size), renderer(0.0).render(params, size)
    mask = shaded.masks[0, 0] > 0.5
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    bottom = int(rows.max())
    darkening = (plain.rgb - shaded.rgb)[0].mean(0)  # background only: the objects are the same
    below = darkening[bottom + 1 : bottom + 3, int(cols.min()) : int(cols.max()) + 1]
    assert below.max() > 0.1, "no shadow just below the object's base"
    assert darkening[: int(rows.min()) - 4].abs().max() < 1e-3, "shadow far above the object"
    assert darkening[bottom + 12 :].abs().max() < 1e-3, "shadow far below the base: the object floats"


@torch.no_grad()
@pytest.mark.parametrize("shape", [(40, 64), (64, 40)])
def test_shadows_and_truncation_of_a_band_match_the_square_render(shape: tuple[int, int]) -> None:
    """A (height, width) render is the centre band of the square render of its longer side
    (renderer.camera), shadows and in-image fractions included."""
    scenes = renderer(0.6)
    params = scene([0, 2])
    params.offset[0, 0, 1] = 0.55  # the first object reaches past the band's top edge
    square, band = scenes.render(params, 64), scenes.render(params, shape)
    top, left = (64 - shape[0]) // 2, (64 - shape[1]) // 2
    crop = (..., slice(top, top + shape[0]), slice(left, left + shape[1]))
    assert torch.allclose(band.rgb, square.rgb[crop], atol=1e-5)
    full = scenes.render(dataclasses.replace(params, present=torch.tensor([[True, False]])), 64)
    assert band.visible[0, 0] < full.visible[0, 0] - 0.05, "the border cut is not counted"


def test_pose_ids_out_of_the_table_are_refused() -> None:
    with pytest.raises(ValueError, match="pose_ids: object 0 has poses"):
        renderer().render(scene([9, -1]), 16)
    plain = SceneRenderer(SceneRendererConfig(), renderer().fields)
    with pytest.raises(ValueError, match="no pose tables"):
        plain.render(scene([-1, -1]), 16)


def test_shadow_mask_has_gradients_for_the_view() -> None:
    params = scene([0, 0])
    params.distance.requires_grad_(True)
    params.elevation.requires_grad_(True)
    out = renderer(0.8).render(params, 32)
    (out.rgb.sum()).backward()
    assert params.distance.grad.abs().sum() > 0 and params.elevation.grad.abs().sum() > 0


@torch.no_grad()
def test_an_object_cut_by_the_border_keeps_its_visible_box_unless_only_a_sliver_is_left() -> None:
    """Truncation: half outside the image, the object is labelled with the box of its visible
    half; with about a tenth inside it is not labelled (min_visible 0.3), although nothing
    occludes it."""
    scenes = renderer(strength=0.0)
    size = 64
    labels = []
    for x in (1.0, 1.3):
        params = dataclasses.replace(SceneParams.single([0], [0], [0], [0.5], offset=[(x, 0.0)]), pose_ids=torch.tensor([[-1]]))
        labels.append(scenes.render(params, size))
    half, sliver = labels
    assert half.keep[0, 0] and half.boxes[0, 0, 2] == size and 0.35 < half.visible[0, 0] < 0.65
    assert half.boxes[0, 0, 0] > size / 2  # the box is the visible part only
    assert (sliver.masks[0, 0] > 0.5).any() and sliver.visible[0, 0] < 0.3 and not sliver.keep[0, 0]


@pytest.mark.parametrize("resting", [True, False])
def test_a_job_renders_its_objects_in_resting_poses_by_default(tmp_path, renderers: list, resting: bool) -> None:
    """run_optimization gives the renderer each asset's pose table, and the starting psi draws
    poses with the tables' probabilities; resting_poses=False keeps floating objects."""
    from detector.datasets import load_dataset
    from optimizer.config import OptimizeConfig, SceneConfig, TargetsConfig
    from optimizer.loop import run_optimization
    from optimizer.priors import starting_psi_config

    scene, photos = _scene_and_photos(tmp_path, [(60, 40, 100, 80)])
    config = OptimizeConfig(scene=SceneConfig(spec=str(scene), resting_poses=resting),
                            targets=TargetsConfig(val=str(photos)))
    run_optimization(config, tmp_path / "out", progress_bar=False)
    (built,) = renderers
    psi_config, _ = starting_psi_config(config, built, ["object"] * len(built.fields), load_dataset(photos))
    if resting:
        assert len(built.poses) == len(built.fields)
        assert psi_config.pose_probs == tuple(tuple(t.choice_probs()) for t in built.poses)
    else:
        assert built.poses is None and psi_config.pose_probs == ()
