"""Train a 3D Gaussian splat from a posed image set on CPU, in the style of the object NeRF trainer
(``renderer.train_object``): the same views, random backgrounds behind the object (which teaches
exact alpha), Adam with one learning rate per kind of parameter (the 3DGS paper's), and simple
adaptive density control (clone or split Gaussians whose screen-space gradient is large, prune
the transparent ones).

Starting Gaussians (``renderer.splat_init``): by default the outer layer of the masks' visual
hull coloured by the views; or points on a mesh's surface, or in a NeRF's dense space
(``renderer.splat_bake``).

Cameras: nerfsim's splat renderer has one focal length and the principal point at the image
centre, so the posed set must too (within :data:`INTRINSICS_TOLERANCE`); a set that does not is
refused with a :class:`renderer.splat.SplatError` naming the intrinsics.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm import tqdm

from renderer.posed_images import PosedImages
from renderer.splat import Gaussians, SplatError, render_gaussians
from renderer.splat_density import DensityControl
from renderer.splat_init import gaussians_from_points, hull_points

INTRINSICS_TOLERANCE = 0.01
"""Largest relative difference between fx and fy, and offset of the principal point from the
image centre as a fraction of the image side, that training accepts."""


@dataclass
class SplatTrainConfig:
    """Configuration of :func:`train_splat`."""

    steps: int = 3000
    """Optimisation steps, one training view each (the run also stops at ``time_budget_s``)."""
    time_budget_s: float | None = None
    """Stop early after this many seconds of training, if set."""
    initial_gaussians: int = 20_000
    """Points drawn by :func:`hull_points` when no initial Gaussians are given."""
    max_gaussians: int = 200_000
    """Densification stops adding Gaussians beyond this many."""
    sh_degree: int = 1
    """Spherical-harmonics degree of the colours (0: one colour per Gaussian)."""
    lr_means: float = 1.6e-3
    """Adam learning rate of the centres in units of the object's bounding-box diagonal at the
    start; decays exponentially to ``lr_means_final``."""
    lr_means_final: float = 1.6e-5
    """Learning rate of the centres at the last step (same units as ``lr_means``)."""
    lr_log_scales: float = 5e-3
    """Adam learning rate of the log standard deviations."""
    lr_quats: float = 1e-3
    """Adam learning rate of the rotation quaternions."""
    lr_opacity: float = 5e-2
    """Adam learning rate of the opacity logits."""
    lr_sh_dc: float = 2.5e-3
    """Adam learning rate of the view-independent colour (the SH DC term)."""
    lr_sh_rest: float = 1.25e-4
    """Learning rate of the view-dependent SH coefficients (3DGS: the DC rate / 20)."""
    ssim_weight: float = 0.2
    """Weight of the (1 - SSIM) term beside L1 (3DGS's lambda)."""
    densify_from: int = 100
    """First step of adaptive density control."""
    densify_until_fraction: float = 0.6
    """Density control stops after this fraction of ``steps`` (then the Gaussians only refine)."""
    densify_every: int = 100
    """Clone / split / prune every this many steps."""
    grad_threshold: float = 0.2
    """Mean screen-space positional gradient above which a Gaussian is cloned (if small) or split
    (if large): of the loss summed over the image's pixels, per pixel of movement, so the same
    value suits every image size (3DGS's 2e-4 in normalised coordinates of ~1000 px images)."""
    dense_fraction: float = 0.01
    """Gaussians larger than this fraction of the box diagonal are split rather than cloned."""
    prune_opacity: float = 0.005
    """Gaussians whose peak opacity falls below this are removed at each density control."""
    seed: int = 0
    """Seeds the starting points, the view and background draws and the splits."""


def camera_of(images: PosedImages) -> float:
    """The field of view (degrees, across the longer side) of the posed set's pinhole camera;
    :class:`SplatError` when it is not one nerfsim's splat renderer can render."""
    side = max(images.width, images.height)
    centred = (abs(images.cx - images.width / 2) <= INTRINSICS_TOLERANCE * side
               and abs(images.cy - images.height / 2) <= INTRINSICS_TOLERANCE * side)
    if not centred or abs(images.fx - images.fy) > INTRINSICS_TOLERANCE * images.fx:
        raise SplatError(
            f"posed images: a splat trains on a pinhole camera with fx = fy and the principal point at the "
            f"image centre, got fx={images.fx:.1f} fy={images.fy:.1f} cx={images.cx:.1f} cy={images.cy:.1f} "
            f"for {images.width}x{images.height} images"
        )
    return math.degrees(2 * math.atan(side / 2 / images.fx))


def object_to_camera_poses(c2w: Float[Tensor, "N 3 4"]) -> tuple[Float[Tensor, "N 3 3"], Float[Tensor, "N 3"]]:
    """``p_cam = R p_obj + t`` of OpenGL camera-to-object matrices."""
    rotation = c2w[:, :, :3].transpose(1, 2)
    return rotation, -(rotation @ c2w[:, :, 3:])[..., 0]


def ssim(x: Float[Tensor, "C H W"], y: Float[Tensor, "C H W"], window: int = 7) -> Tensor:
    """Mean structural similarity over box windows (a cheap stand-in for 3DGS's Gaussian window)."""
    c1, c2 = 0.01**2, 0.03**2

    def pool(t: Tensor) -> Tensor:
        return F.avg_pool2d(t[None], window, stride=1, padding=window // 2, count_include_pad=False)[0]

    mx, my = pool(x), pool(y)
    vx, vy, cxy = pool(x * x) - mx * mx, pool(y * y) - my * my, pool(x * y) - mx * my
    return (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))).mean()


def train_splat(images: PosedImages, config: SplatTrainConfig, init: Gaussians | None = None,
                progress: bool = True) -> tuple[Gaussians, dict]:
    """Fit Gaussians to a posed image set (object frame); returns them and training statistics.
    ``init``: the starting Gaussians (default: :func:`hull_points` through
    :func:`gaussians_from_points`); their SH degree is changed to ``config.sh_degree``."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    fov_deg = camera_of(images)
    rotations, translations = object_to_camera_poses(images.c2w)
    if init is None:
        init = gaussians_from_points(*hull_points(images, config.initial_gaussians, generator), config.sh_degree)
    k = (config.sh_degree + 1) ** 2
    sh = torch.cat([init.sh[:, :k], init.sh.new_zeros(init.num, max(k - init.sh.shape[1], 0), 3)], dim=1)
    start_g = Gaussians(init.means, init.log_scales, init.quats, init.opacity_logits, sh).detach().to("cpu", torch.float32)
    extent = float((start_g.aabb()[1] - start_g.aabb()[0]).norm())
    control = DensityControl(start_g, config, extent)
    size = (images.height, images.width)
    pixels = images.height * images.width  # the loss is a mean over pixels; the statistic, a sum
    densify_until = int(config.densify_until_fraction * config.steps)
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="train splat", disable=not progress, unit="step")
    steps_done, loss_value = 0, math.nan
    for step in bar:
        view = int(torch.randint(0, images.c2w.shape[0], (), generator=generator))
        control.set_means_lr(config.lr_means * extent * (config.lr_means_final / config.lr_means) ** (step / max(config.steps, 1)))
        gaussians = control.gaussians()
        background = torch.rand(3, generator=generator)
        rgb, _, _ = render_gaussians(gaussians, rotations[view], translations[view], fov_deg, size,
                                     background=background)
        alpha = images.alpha[view].permute(2, 0, 1)
        target = images.rgb[view].permute(2, 0, 1) * alpha + (1 - alpha) * background[:, None, None]
        loss = (1 - config.ssim_weight) * (rgb - target).abs().mean() + config.ssim_weight * (1 - ssim(rgb, target))
        control.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        depth = -(gaussians.means.detach() @ rotations[view][2] + translations[view][2])
        control.record_gradients(depth / images.fx * pixels)
        control.optimizer.step()
        steps_done, loss_value = step + 1, float(loss.detach())
        if config.densify_from <= steps_done <= densify_until and steps_done % config.densify_every == 0:
            control.densify_and_prune(generator)
        if steps_done % 10 == 0:
            bar.set_postfix(loss=f"{loss_value:.4f}", gaussians=control.num)
        if config.time_budget_s is not None and time.perf_counter() - start > config.time_budget_s:
            break
    result = control.gaussians().detach().filtered(config.prune_opacity)
    stats = {"steps": steps_done, "seconds": round(time.perf_counter() - start, 1), "final_loss": loss_value,
             "gaussians": result.num}
    return result, stats


@torch.no_grad()
def render_splat_views(gaussians: Gaussians, images: PosedImages) -> tuple[Float[Tensor, "N H W 3"], Float[Tensor, "N H W 1"]]:
    """Premultiplied colour and opacity of the splat seen from every camera of ``images`` (the
    layout of ``renderer.train_object.render_views``, so ``psnr_on_white`` scores both)."""
    fov_deg = camera_of(images)
    rotations, translations = object_to_camera_poses(images.c2w)
    rgbs, alphas = [], []
    for view in range(images.c2w.shape[0]):
        rgb, alpha, _ = render_gaussians(gaussians, rotations[view], translations[view], fov_deg,
                                         (images.height, images.width))
        rgbs.append(rgb.permute(1, 2, 0))
        alphas.append(alpha.permute(1, 2, 0))
    return torch.stack(rgbs), torch.stack(alphas)
