"""The splat renderer alone: conventions checked against gsplat's reference code, culling, errors."""

from __future__ import annotations

import pytest
import torch

from renderer.camera import focal_length, object_to_camera
from renderer.splat import Gaussians, SplatError, SplatObject, render_gaussians
from renderer.splat_sh import sh_colour
from tests.renderer.splats import random_gaussians


def pose(distance: float = 0.4, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    r, t = object_to_camera(torch.tensor(0.4), torch.tensor(0.3), torch.tensor(0.2), torch.tensor(distance),
                            torch.tensor([0.1, -0.05]), 40.0)
    return r.to(dtype), t.to(dtype)


def test_sh_colours_match_gsplat_reference() -> None:
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    g = random_gaussians(50, degree=3)
    directions = torch.randn(50, 3, dtype=torch.float64)
    reference = torch_impl._spherical_harmonics(3, directions, g.sh) + 0.5
    assert torch.allclose(sh_colour(g.sh, directions), reference.clamp(min=0), atol=1e-12)


def test_projection_matches_gsplat_reference() -> None:
    # Each Gaussian alone at one pixel: alpha = opacity * exp(-q / 2) with gsplat's 2D mean and conic.
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    g = random_gaussians(1, degree=0, log_scale=-3.0)
    rotation, translation = pose()
    size = 32
    focal = focal_length(size, 40.0)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    view = torch.eye(4, dtype=torch.float64)
    view[:3, :3], view[:3, 3] = flip @ rotation, flip @ translation
    intrinsics = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]], dtype=torch.float64)
    _, means2d, depths, conics, _ = torch_impl._fully_fused_projection(
        g.means, g.covariances(), view[None], intrinsics[None], size, size)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    d = torch.stack([xs - means2d[0, 0, 0], ys - means2d[0, 0, 1]], -1).double()
    a, b, c = conics[0, 0]
    q = a * d[..., 0] ** 2 + 2 * b * d[..., 0] * d[..., 1] + c * d[..., 1] ** 2
    expected = torch.sigmoid(g.opacity_logits[0]) * torch.exp(-q / 2)
    expected = torch.where((q <= 9) & (expected >= 1 / 255), expected.clamp(max=0.99), torch.zeros_like(expected))
    _, alpha, depth = render_gaussians(g, rotation, translation, 40.0, size)
    assert expected.sum() > 1
    assert torch.allclose(alpha[0], expected, atol=1e-9)
    # Depth: where the pixel's ray meets the plane at the Gaussian's z-depth.
    ray_stretch = torch.sqrt(1 + ((xs - size / 2) / focal) ** 2 + ((ys - size / 2) / focal) ** 2).double()
    hit = expected > 0
    assert torch.allclose(depth[0][hit], (depths[0, 0] * ray_stretch)[hit], atol=1e-9)


def test_output_shapes_background_and_non_square_images() -> None:
    g = random_gaussians(60, degree=1)
    rotation, translation = pose()
    rgb, alpha, depth = render_gaussians(g, rotation, translation, 40.0, (20, 30))
    assert rgb.shape == (3, 20, 30) and alpha.shape == (1, 20, 30) and depth.shape == (1, 20, 30)
    assert 0 < float(alpha.max()) <= 1 and alpha.min() >= 0
    grey = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    over, _, _ = render_gaussians(g, rotation, translation, 40.0, (20, 30), background=grey)
    assert torch.allclose(over, rgb + (1 - alpha) * grey[:, None, None])
    image = torch.rand(3, 20, 30, dtype=torch.float64)
    over, _, _ = render_gaussians(g, rotation, translation, 40.0, (20, 30), background=image)
    assert torch.allclose(over, rgb + (1 - alpha) * image)


@pytest.mark.parametrize("shape", [(21, 32), (32, 21), (20, 32)])
def test_a_band_is_the_centre_of_the_square_render(shape: tuple[int, int]) -> None:
    """As for NeRF objects (renderer.camera): a (height, width) image is the centre band of the
    square of its longer side, also when the sides differ by an odd number of pixels."""
    g = random_gaussians(60, degree=1)
    rotation, translation = pose()
    square = render_gaussians(g, rotation, translation, 40.0, 32)
    band = render_gaussians(g, rotation, translation, 40.0, shape)
    top, left = (32 - shape[0]) // 2, (32 - shape[1]) // 2
    for whole, part in zip(square, band):
        assert torch.allclose(part, whole[:, top : top + shape[0], left : left + shape[1]], atol=1e-6)


def test_gaussians_behind_the_camera_or_off_image_draw_nothing() -> None:
    g = random_gaussians(20, degree=0)
    rotation = torch.eye(3, dtype=torch.float64)
    behind = render_gaussians(g, rotation, torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64), 40.0, 16)
    aside = render_gaussians(g, rotation, torch.tensor([3.0, 0.0, -0.5], dtype=torch.float64), 40.0, 16)
    for rgb, alpha, depth in (behind, aside):
        assert alpha.abs().sum() == 0 and rgb.abs().sum() == 0 and depth.abs().sum() == 0


def test_bad_gaussians_and_backends_raise() -> None:
    with pytest.raises(SplatError, match="Gaussians.sh must have shape"):
        Gaussians(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.zeros(2, 5, 3))
    with pytest.raises(SplatError, match="Gaussians.quats"):
        Gaussians(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, 1, 3))
    rotation, translation = pose()
    with pytest.raises(SplatError, match="needs the Gaussians on a CUDA device"):
        render_gaussians(random_gaussians(3), rotation, translation, 40.0, 8, backend="gsplat")


def test_gaussians_helpers() -> None:
    g = random_gaussians(10, degree=2)
    assert (g.num, g.degree) == (10, 2)
    g.opacity_logits[0] = -20.0  # invisible
    g.means[1, 2] = float("inf")
    assert g.filtered().num == 9 and g.filtered(min_opacity=1 / 255).num == 8
    box = g.aabb()
    assert box.shape == (2, 3) and torch.isfinite(box).all()
    far = g.filtered()
    far.means[2] = torch.tensor([5.0, 5.0, 5.0], dtype=torch.float64)  # a floater
    assert float(far.aabb()[1, 0]) > 4 and float(far.aabb(quantile=0.15)[1, 0]) < 1
    assert g.to(dtype=torch.float32).means.dtype == torch.float32
    splat = SplatObject(g.filtered())
    assert {name for name, _ in splat.named_parameters()} == {"means", "log_scales", "quats", "opacity_logits", "sh"}
    assert torch.equal(splat.aabb, g.filtered().aabb())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat's rasteriser")
def test_gsplat_matches_the_torch_path_on_cuda() -> None:
    g = random_gaussians(300, degree=2, dtype=torch.float32, log_scale=-5.0)
    rotation, translation = pose(dtype=torch.float32)
    background = torch.tensor([0.3, 0.5, 0.7])
    cpu = render_gaussians(g, rotation, translation, 40.0, (48, 64), background=background)
    cuda = render_gaussians(g.to("cuda"), rotation.cuda(), translation.cuda(), 40.0, (48, 64),
                            background=background.cuda())
    # gsplat clamps alpha at 0.999 (not 0.99) and its footprints follow tiles, not the 3-sigma
    # ellipse: the paths differ by about 1% of a peak opacity at footprint rims, nowhere more.
    rgb, alpha, depth = (x.cpu() for x in cuda)
    assert alpha.sum() > 100
    for name, x, y in [("rgb", cpu[0], rgb), ("alpha", cpu[1], alpha)]:
        difference = (x - y).abs()
        assert difference.mean() < 2e-3 and difference.max() < 0.05, (name, float(difference.mean()), float(difference.max()))
    both = (cpu[1] > 0.5) & (alpha > 0.5)
    assert torch.allclose(cpu[2][both], depth[both], rtol=0.02)


def reference_render(g: Gaussians, rotation: torch.Tensor, translation: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """3DGS's per-pixel loop, written plainly: every Gaussian front to back at every pixel."""
    focal = focal_length(size, 40.0)
    centres = g.means @ rotation.T + translation
    z = -centres[:, 2]
    u, v = size / 2 + focal * centres[:, 0] / z, size / 2 - focal * centres[:, 1] / z
    jacobian = torch.zeros(g.num, 2, 3, dtype=g.means.dtype)
    jacobian[:, 0, 0], jacobian[:, 0, 2] = focal / z, focal * centres[:, 0] / z**2
    jacobian[:, 1, 1], jacobian[:, 1, 2] = -focal / z, -focal * centres[:, 1] / z**2
    cov = jacobian @ rotation @ g.covariances() @ rotation.T @ jacobian.transpose(1, 2) + 0.3 * torch.eye(2, dtype=g.means.dtype)
    conic = torch.linalg.inv(cov)
    colour = sh_colour(g.sh, g.means + rotation.T @ translation)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    transmittance = torch.ones(size, size, dtype=g.means.dtype)
    done = torch.zeros(size, size, dtype=torch.bool)
    rgb = torch.zeros(3, size, size, dtype=g.means.dtype)
    depth = torch.zeros(size, size, dtype=g.means.dtype)
    stretch = torch.sqrt(1 + ((xs - size / 2) / focal) ** 2 + ((ys - size / 2) / focal) ** 2).double()
    for i in torch.argsort(z):
        d = torch.stack([xs - u[i], ys - v[i]], -1).double()
        q = torch.einsum("hwi,ij,hwj->hw", d, conic[i], d)
        alpha = (torch.sigmoid(g.opacity_logits[i]) * torch.exp(-q / 2)).clamp(max=0.99)
        counts = (q <= 9) & (alpha >= 1 / 255) & ~done
        stop = counts & (transmittance * (1 - alpha) <= 1e-4)
        done |= stop
        counts &= ~stop
        weight = torch.where(counts, transmittance * alpha, torch.zeros_like(alpha))
        rgb += weight * colour[i][:, None, None]
        depth += weight * z[i] * stretch
        transmittance = torch.where(counts, transmittance * (1 - alpha), transmittance)
    alpha = 1 - transmittance
    return rgb, alpha[None], torch.where(alpha > 1e-4, depth / alpha.clamp(min=1e-4), torch.zeros_like(depth))[None]


def test_matches_a_plain_per_pixel_3dgs_loop_with_occlusion() -> None:
    # An opaque cloud in front of a fainter one: early termination and the culling of hidden
    # Gaussians (done in depth slices) must not change any pixel.
    front = random_gaussians(150, degree=1, seed=4, log_scale=-4.0)
    front.opacity_logits += 4.0
    back = random_gaussians(150, degree=2, seed=5, log_scale=-4.0)
    back.means[:, 2] -= 0.05
    g = Gaussians(*(torch.cat([getattr(front, n), getattr(back, n)[:, : getattr(front, n).shape[1]] if n == "sh"
                                else getattr(back, n)]) for n in ["means", "log_scales", "quats", "opacity_logits", "sh"]))
    rotation, translation = torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, -0.3], dtype=torch.float64)
    expected = reference_render(g, rotation, translation, 40)
    got = render_gaussians(g, rotation, translation, 40.0, 40)
    assert (expected[1] > 0.999).sum() > 100  # many pixels terminate early
    for name, x, y in zip(["rgb", "alpha", "depth"], got, expected):
        assert torch.allclose(x, y, atol=1e-9), (name, float((x - y).abs().max()))


def test_rendering_without_gradients_gives_the_same_images() -> None:
    # Without gradients the pair search's own alphas are used instead of a second evaluation.
    g = random_gaussians(200, degree=2, log_scale=-4.0, seed=6)
    rotation, translation = pose()
    with_grad = render_gaussians(g, rotation, translation, 40.0, (30, 40))
    with torch.no_grad():
        without = render_gaussians(g, rotation, translation, 40.0, (30, 40))
    for x, y in zip(with_grad, without):
        assert torch.allclose(x, y, atol=1e-12)


@pytest.mark.parametrize("name", ["means", "log_scales", "quats", "opacity_logits", "sh", "rotation", "translation",
                                  "background"])
def test_render_gaussians_gradients_match_finite_differences(name: str) -> None:
    g = random_gaussians(12, degree=1, log_scale=-3.5, seed=9)
    rotation, translation = pose(distance=0.3)
    inputs = {"rotation": rotation, "translation": translation, "background": torch.tensor([0.3, 0.6, 0.9]).double()}
    weights = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def loss(value: torch.Tensor) -> torch.Tensor:
        changed = {**inputs, name: value} if name in inputs else inputs
        splat = Gaussians(**{**g.__dict__, name: value}) if name not in inputs else g
        rgb, alpha, depth = render_gaussians(splat, changed["rotation"], changed["translation"], 40.0, 8,
                                             background=changed["background"])
        return (rgb * weights).sum() + alpha.sum() + depth.sum()

    value = (inputs[name] if name in inputs else getattr(g, name)).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(loss, (value,), eps=1e-6, atol=1e-6, rtol=1e-4)
    (grad,) = torch.autograd.grad(loss(value), value)
    assert grad.abs().sum() > 0
