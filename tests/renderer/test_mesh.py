"""Mesh loading and rendering on a small textured box written by the test (no shared assets)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from renderer.camera import camera_ray_directions, focal_length, view_rotation
from renderer.mesh import (
    MeshError,
    MeshSceneRenderer,
    MeshSceneRendererConfig,
    build_posed_image_set,
    load_textured_mesh,
    orbit_cameras,
    render_mesh_views,
)
from renderer.posed_images import load_posed_images
from renderer.scene_types import SceneParams
from tests.renderer.meshes import BLUE, CYAN, FILE_HIGH, FILE_LOW, GREEN, GREY, HALF, RED, YELLOW, write_box

SIZE, FOV = 64, 40.0


def front_camera(distance: float) -> torch.Tensor:
    """OpenGL camera-to-object matrix [1, 3, 4] on the +z axis looking at the origin."""
    c2w = torch.eye(4)[:3].clone()
    c2w[2, 3] = distance
    return c2w[None]


def pixel_coverage(x_range: tuple[float, float], y_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels fully inside / fully outside a rectangle given in pixel coordinates (x right, y down)."""
    edges = np.arange(SIZE)
    inside_x = (edges >= x_range[0]) & (edges + 1 <= x_range[1])
    inside_y = (edges >= y_range[0]) & (edges + 1 <= y_range[1])
    outside_x = (edges + 1 <= x_range[0]) | (edges >= x_range[1])
    outside_y = (edges + 1 <= y_range[0]) | (edges >= y_range[1])
    inside = inside_y[:, None] & inside_x[None, :]
    outside = outside_y[:, None] | outside_x[None, :]
    return inside, outside


def test_load_puts_the_box_in_the_object_frame(tmp_path: Path) -> None:
    mesh = load_textured_mesh(write_box(tmp_path))
    torch.testing.assert_close(mesh.half_extents, torch.tensor(HALF))
    torch.testing.assert_close(mesh.vertices.amin(0), -torch.tensor(HALF))
    torch.testing.assert_close(mesh.vertices.amax(0), torch.tensor(HALF))
    assert mesh.faces.shape == (12, 3) and mesh.texture.shape == (32, 96, 3)
    torch.testing.assert_close(mesh.aabb, torch.tensor([[-0.05, -0.1, -0.03], [0.05, 0.1, 0.03]]))


def test_front_view_silhouette_alpha_colour_and_depth(tmp_path: Path) -> None:
    mesh = load_textured_mesh(write_box(tmp_path))
    distance = 0.5
    rgba, depth = render_mesh_views(mesh, front_camera(distance), SIZE, FOV, spp=16)
    rgba, depth = rgba[0].numpy(), depth[0, ..., 0].numpy()

    # The silhouette is the front face, at depth distance - 0.03, projected with the focal length.
    focal = focal_length(SIZE, FOV)
    z = distance - HALF[2]
    x_range = (SIZE / 2 - focal * HALF[0] / z, SIZE / 2 + focal * HALF[0] / z)
    y_range = (SIZE / 2 - focal * HALF[1] / z, SIZE / 2 + focal * HALF[1] / z)
    inside, outside = pixel_coverage(x_range, y_range)
    alpha = rgba[..., 3]
    assert inside.sum() > 300 and outside.sum() > 2000
    assert np.all(alpha[inside] == 1.0)
    assert np.all(alpha[outside] == 0.0)
    area = (x_range[1] - x_range[0]) * (y_range[1] - y_range[0])
    assert abs(alpha.sum() - area) < 0.02 * area

    # Unlit texture colours, not mirrored: red top-left, green top-right, blue bottom-left,
    # yellow bottom-right (rows go down the image). Pixels away from the quadrant borders.
    cy, cx = SIZE / 2, SIZE / 2
    for colour, row_sign, col_sign in ((RED, -1, -1), (GREEN, -1, 1), (BLUE, 1, -1), (YELLOW, 1, 1)):
        pick = inside & (np.sign(np.arange(SIZE) + 0.5 - cy)[:, None] == row_sign) & (
            np.sign(np.arange(SIZE) + 0.5 - cx)[None, :] == col_sign
        )
        pick &= (np.abs(np.arange(SIZE) + 0.5 - cy)[:, None] > 2) & (np.abs(np.arange(SIZE) + 0.5 - cx)[None, :] > 2)
        assert pick.sum() > 20
        np.testing.assert_allclose(rgba[pick][:, :3], np.broadcast_to(colour, (pick.sum(), 3)), atol=0.01)

    # Depth is the ray length to the front face plane.
    directions = camera_ray_directions(SIZE, FOV).numpy()
    expected = z / -directions[..., 2]
    np.testing.assert_allclose(depth[inside], expected[inside], atol=1e-3)
    assert np.all(depth[outside] == 0)


def test_top_view_sees_the_files_z_up_face(tmp_path: Path) -> None:
    mesh = load_textured_mesh(write_box(tmp_path))
    # Looking straight down the object's y axis.
    rotation = view_rotation(torch.tensor(0.0), torch.tensor(math.pi / 2), torch.tensor(0.0))
    c2w = torch.cat([rotation.T, rotation.T @ torch.tensor([[0.0], [0.0], [0.5]])], dim=1)
    rgba, depth = render_mesh_views(mesh, c2w[None], SIZE, FOV, spp=4)
    np.testing.assert_allclose(rgba[0, SIZE // 2, SIZE // 2, :3].numpy(), CYAN, atol=0.01)
    assert abs(float(depth[0, SIZE // 2, SIZE // 2, 0]) - (0.5 - HALF[1])) < 2e-3


def two_box_scene(tmp_path: Path, near_slot: int, min_visible: float = 0.3) -> tuple[SceneParams, MeshSceneRenderer]:
    meshes = [
        load_textured_mesh(write_box(tmp_path / "red", front=(RED,) * 4, top=RED, other=RED)),
        load_textured_mesh(write_box(tmp_path / "blue", front=(BLUE,) * 4, top=BLUE, other=BLUE)),
    ]
    distances = [0.45, 0.7] if near_slot == 0 else [0.7, 0.45]
    params = SceneParams.single(
        [0, 1], [0.0, 0.0], [0.0, 0.0], distances,
        offset=[(-0.15, 0.0), (0.15, 0.0)], background_color=(0.0, 1.0, 0.0),
    )
    config = MeshSceneRendererConfig(fov_deg=FOV, spp=8, min_visible=min_visible)
    return params, MeshSceneRenderer(config, meshes)


@pytest.mark.parametrize("near_slot", [0, 1])
def test_scene_occlusion_nearer_object_wins(tmp_path: Path, near_slot: int) -> None:
    params, renderer = two_box_scene(tmp_path, near_slot)
    out = renderer.render(params, SIZE)
    far_slot = 1 - near_slot
    masks = out.masks[0]
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert not bool((masks[0] * masks[1]).any()), "instance masks overlap"
    # The near object owns the pixels where both are, and shows its colour there.
    near_colour = torch.tensor(RED if near_slot == 0 else BLUE)
    both = (masks[near_slot] == 1) & (out.alpha[0, 0] == 1)
    assert out.visible[0, near_slot] == 1.0
    assert 0.2 < float(out.visible[0, far_slot]) < 0.95
    torch.testing.assert_close(out.rgb[0][:, both].mean(dim=1), near_colour, atol=0.01, rtol=0)
    assert bool(out.keep.all())
    # Boxes bound the masks; the background shows where nothing is.
    for slot in (0, 1):
        rows, cols = torch.nonzero(masks[slot], as_tuple=True)
        expected = torch.stack([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float()
        torch.testing.assert_close(out.boxes[0, slot], expected)
    empty = out.alpha[0, 0] == 0
    torch.testing.assert_close(out.rgb[0][:, empty].mean(dim=1), torch.tensor([0.0, 1.0, 0.0]))
    # Depth: the near box is nearer than the far one (away from pixels that mix both).
    next_to_near = torch.nn.functional.max_pool2d(masks[near_slot][None], 3, stride=1, padding=1)[0] == 1
    near_depth = out.depth[0, 0][(masks[near_slot] == 1) & (out.alpha[0, 0] == 1)]
    far_depth = out.depth[0, 0][(masks[far_slot] == 1) & (out.alpha[0, 0] == 1) & ~next_to_near]
    assert float(near_depth.max()) < 0.5 and float(far_depth.min()) > 0.65


def test_scene_drops_mostly_hidden_objects_and_scales_colour(tmp_path: Path) -> None:
    params, renderer = two_box_scene(tmp_path, near_slot=0, min_visible=0.95)
    params.exposure[0, 0] = -1.0
    params.color_gain[0, 0] = torch.tensor([1.0, 0.5, 1.0])
    out = renderer.render(params, SIZE)
    assert out.keep[0].tolist() == [True, False]
    assert out.classes[0].tolist() == [0, 1]
    inside = (out.masks[0, 0] == 1) & (out.alpha[0, 0] == 1)
    expected = torch.tensor(RED) * torch.tensor([0.5, 0.25, 0.5])
    torch.testing.assert_close(out.rgb[0][:, inside].mean(dim=1), expected, atol=0.01, rtol=0)


def test_mesh_errors_name_the_file(tmp_path: Path) -> None:
    no_texture = write_box(tmp_path / "no_texture", texture=False)
    with pytest.raises(MeshError, match="no_texture/box.obj.*without a texture"):
        load_textured_mesh(no_texture)
    no_mtl = write_box(tmp_path / "no_mtl", mtl=False)
    with pytest.raises(MeshError, match="no_mtl/box.obj.*without a texture"):
        load_textured_mesh(no_mtl)
    missing_texture = write_box(tmp_path / "missing_texture")
    (tmp_path / "missing_texture" / "box.png").unlink()
    with pytest.raises(MeshError, match="missing_texture/box.png.*not found"):
        load_textured_mesh(missing_texture)
    no_uv = tmp_path / "no_uv.obj"
    no_uv.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(MeshError, match="no_uv.obj:4: face without texture coordinates"):
        load_textured_mesh(no_uv)
    with pytest.raises(MeshError, match="nothing.obj: mesh file not found"):
        load_textured_mesh(tmp_path / "nothing.obj")


def test_posed_image_set_round_trip(tmp_path: Path) -> None:
    obj = write_box(tmp_path / "box")
    transforms = build_posed_image_set(
        obj, tmp_path / "set", num_views=6, num_test_views=2, size=32, spp=4, seed=3, progress=False
    )
    train = load_posed_images(transforms.parent, "train")
    test = load_posed_images(transforms.parent, "test")
    everything = load_posed_images(transforms.parent, "all")
    assert (len(train.rgb), len(test.rgb), len(everything.rgb)) == (6, 2, 8)
    assert not set(train.image_paths) & set(test.image_paths)
    assert train.fx == train.fy == pytest.approx(focal_length(32, 40.0))
    assert (train.width, train.height, train.cx, train.cy) == (32, 32, 16.0, 16.0)
    torch.testing.assert_close(everything.aabb, torch.tensor([[-0.05, -0.1, -0.03], [0.05, 0.1, 0.03]]))
    torch.testing.assert_close(everything.c2w, orbit_cameras(8, float(everything.c2w[0, :, 3].norm()), seed=3))

    # The stored images are the renders of those cameras, up to 8-bit rounding.
    rgba, _ = render_mesh_views(load_textured_mesh(obj), everything.c2w[:1], 32, 40.0, spp=4, seed=3)
    stored = torch.cat([everything.rgb[0] * everything.alpha[0], everything.alpha[0]], dim=-1)
    rendered = torch.cat([rgba[0, ..., :3] * rgba[0, ..., 3:], rgba[0, ..., 3:]], dim=-1)
    torch.testing.assert_close(stored, rendered, atol=3 / 255, rtol=0)
    # Every view sees the object, and every camera looks at the origin.
    assert bool((everything.alpha.flatten(1).amax(1) == 1).all())
    forward = -everything.c2w[:, :, 2]
    towards_origin = -everything.c2w[:, :, 3] / everything.c2w[:, :, 3].norm(dim=1, keepdim=True)
    torch.testing.assert_close(forward, towards_origin)

    # nerfstudio's own parser reads the same splits (validation = test) and intrinsics.
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    parser = NerfstudioDataParserConfig(data=transforms.parent).setup()
    for split, expected in (("train", train), ("val", test), ("test", test)):
        outputs = parser.get_dataparser_outputs(split)
        assert sorted(outputs.image_filenames) == sorted(expected.image_paths)
        assert float(outputs.cameras.fx[0]) == pytest.approx(expected.fx)


def test_a_rectangular_scene_is_the_centre_band_of_the_square(tmp_path: Path) -> None:
    params, renderer = two_box_scene(tmp_path, near_slot=0)
    square = renderer.render(params, SIZE)
    height, width = SIZE, SIZE - 8  # a portrait band: columns 4 .. SIZE - 4
    band = renderer.render(params, (height, width))
    assert band.rgb.shape == (1, 3, height, width) and band.masks.shape == (1, 2, height, width)
    for name in ("rgb", "alpha", "masks", "depth"):
        torch.testing.assert_close(getattr(band, name), getattr(square, name)[..., 4 : 4 + width], atol=0.02, rtol=0)
    torch.testing.assert_close(band.boxes[0, :, [0, 2]], (square.boxes[0, :, [0, 2]] - 4).clamp(0, width))
