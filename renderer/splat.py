"""3D Gaussian splats as nerfsim objects: the Gaussians, a scene object, and a one-object render.

A splat lives in the object frame like every nerfsim object (metres, y up, origin at the centre of
its bounding box). Conventions follow the 3DGS papers' code (Inria layout): scales as logs,
rotations as w x y z quaternions (normalised where used), opacity as a logit, colour as
spherical-harmonics coefficients with the DC term first, ``colour = max(0.5 + SH(view dir), 0)``
where the view direction goes from the camera to the Gaussian, in the object frame.

On CPU everything renders in plain torch (``renderer.splat_raster``: EWA projection, then every
(Gaussian, pixel) pair becomes a packed sample composited by ``renderer.raymarch``, the same path
NeRF objects take); ``render_gaussians`` uses ``gsplat.rasterization`` for Gaussians on CUDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from renderer.camera import Size, image_shape
from renderer.raymarch import PackedSamples, accumulate, compositing_weights
from renderer.splat_raster import ALPHA_MIN, splat_samples


class SplatError(ValueError):
    """A splat that cannot be used: a bad file, bad tensors, or an unavailable backend."""


@dataclass
class Gaussians:
    """N anisotropic 3D Gaussians in an object frame."""

    means: Float[Tensor, "N 3"]
    """Centres, object frame, metres."""
    log_scales: Float[Tensor, "N 3"]
    """Natural logs of the standard deviations along the Gaussian's own axes, metres."""
    quats: Float[Tensor, "N 4"]
    """Rotations of the Gaussians' axes as w x y z quaternions (normalised where used)."""
    opacity_logits: Float[Tensor, "N"]
    """Peak opacity before the sigmoid."""
    sh: Float[Tensor, "N K 3"]
    """Spherical-harmonics coefficients per colour channel, K = (degree + 1)^2, DC first."""

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        shapes = {"means": (n, 3), "log_scales": (n, 3), "quats": (n, 4), "opacity_logits": (n,)}
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise SplatError(f"Gaussians.{name} must have shape {list(shape)}, got {list(getattr(self, name).shape)}")
        k = self.sh.shape[1] if self.sh.dim() == 3 else -1
        if self.sh.dim() != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3 or k not in (1, 4, 9, 16):
            raise SplatError(f"Gaussians.sh must have shape [{n}, K, 3] with K in 1, 4, 9, 16, got {list(self.sh.shape)}")

    @property
    def num(self) -> int:
        """Number of Gaussians."""
        return self.means.shape[0]

    @property
    def degree(self) -> int:
        """Spherical-harmonics degree (0-3)."""
        return math.isqrt(self.sh.shape[1]) - 1

    def _tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Gaussians":
        return Gaussians(**{name: value.to(device=device, dtype=dtype) for name, value in self._tensors().items()})

    def take(self, index: Tensor) -> "Gaussians":
        """The Gaussians selected by ``index`` (a boolean mask or indices)."""
        return Gaussians(**{name: value[index] for name, value in self._tensors().items()})

    def detach(self) -> "Gaussians":
        return Gaussians(**{name: value.detach() for name, value in self._tensors().items()})

    def covariances(self) -> Float[Tensor, "N 3 3"]:
        """Sigma = R S S R^T in the object frame."""
        axes = quat_to_rotmat(self.quats) * torch.exp(self.log_scales)[:, None, :]
        return axes @ axes.transpose(-1, -2)

    def finite(self) -> Tensor:
        """Rows whose every value is finite."""
        return torch.stack([value.reshape(self.num, -1).isfinite().all(dim=1) for value in self._tensors().values()]).all(0)

    def filtered(self, min_opacity: float = 0.0) -> "Gaussians":
        """The Gaussians whose values are all finite and whose peak opacity is at least
        ``min_opacity`` (pass ``ALPHA_MIN`` to drop those that can never colour a pixel)."""
        keep = self.finite()
        if min_opacity > 0:
            keep &= torch.sigmoid(self.opacity_logits) >= min_opacity
        return self.take(keep)

    def aabb(self, quantile: float = 0.0) -> Float[Tensor, "2 3"]:
        """Box around every Gaussian's mean +- 3 sigma per axis (detached), over the Gaussians
        that can colour a pixel (peak opacity >= ALPHA_MIN) and have finite values.
        ``quantile`` > 0 ignores that fraction of the outermost Gaussians on each side of each
        axis (stray "floaters" of a captured splat)."""
        g = self.detach().filtered(ALPHA_MIN)
        if g.num == 0:
            raise SplatError("a splat without a visible Gaussian has no bounding box")
        sigma = torch.diagonal(g.covariances(), dim1=-2, dim2=-1).sqrt()
        low, high = g.means - 3 * sigma, g.means + 3 * sigma
        if quantile > 0:
            return torch.stack([low.quantile(quantile, dim=0), high.quantile(1 - quantile, dim=0)])
        return torch.stack([low.amin(dim=0), high.amax(dim=0)])


def quat_to_rotmat(quats: Float[Tensor, "N 4"]) -> Float[Tensor, "N 3 3"]:
    """Rotation matrices of w x y z quaternions (normalised here)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*quats.shape[:-1], 3, 3)


class SplatObject(nn.Module):
    """A splat as a scene object: its Gaussians are parameters, and
    ``renderer.scene_renderer.SceneRenderer`` takes it in its object list next to NeRF fields
    (it rasterises the slots that use it into packed samples instead of marching rays)."""

    def __init__(self, gaussians: Gaussians) -> None:
        super().__init__()
        for name, value in gaussians._tensors().items():
            setattr(self, name, nn.Parameter(value.detach().clone()))

    @property
    def gaussians(self) -> Gaussians:
        """The current Gaussians (differentiable w.r.t. this module's parameters)."""
        return Gaussians(self.means, self.log_scales, self.quats, self.opacity_logits, self.sh)

    @property
    def aabb(self) -> Float[Tensor, "2 3"]:
        """Bounding box of the Gaussians, object frame (see :meth:`Gaussians.aabb`)."""
        return self.gaussians.aabb()

    def packed_samples(
        self,
        rotation: Float[Tensor, "V 3 3"],
        translation: Float[Tensor, "V 3"],
        fov_deg: float,
        size: Size,
    ) -> PackedSamples:
        """The object seen in V views (object-to-camera poses) as packed samples, one per
        (Gaussian, pixel) pair; ``ray_ids`` = view * pixels + pixel, like ``march_field``'s."""
        height, width = image_shape(size)
        g = self.gaussians
        parts = []
        for view in range(rotation.shape[0]):
            samples = splat_samples(g, rotation[view], translation[view], fov_deg, (height, width))
            samples.ray_ids = samples.ray_ids + view * height * width
            parts.append(samples)
        return PackedSamples.cat(parts) if parts else PackedSamples.empty(rotation.device)


def render_gaussians(
    gaussians: Gaussians,
    rotation: Float[Tensor, "3 3"],
    translation: Float[Tensor, "3"],
    fov_deg: float,
    size: Size,
    background: Tensor | None = None,
    backend: Literal["auto", "torch", "gsplat"] = "auto",
) -> tuple[Float[Tensor, "3 H W"], Float[Tensor, "1 H W"], Float[Tensor, "1 H W"]]:
    """One splat alone through nerfsim's camera (``renderer.camera``: OpenGL axes, camera at the
    origin looking down -z, ``p_cam = rotation @ p_obj + translation``, ``fov_deg`` across the
    longer image side; ``size`` is the square side or (height, width)).

    Returns rgb (over ``background``: a colour [3] or image [3, H, W]; None: premultiplied, i.e.
    black), alpha, and depth (expected distance along the pixel's ray, 0 where alpha < 1e-4).
    Differentiable w.r.t. every Gaussian tensor, the pose and the background; not w.r.t. which
    (Gaussian, pixel) pairs exist (see ``renderer.splat_raster``). ``backend``: "auto" uses gsplat
    for Gaussians on CUDA and torch otherwise; "gsplat" on CPU raises :class:`SplatError`.
    """
    height, width = image_shape(size)
    on_cuda = gaussians.means.is_cuda
    if backend == "gsplat" and not on_cuda:
        raise SplatError("backend 'gsplat' needs the Gaussians on a CUDA device (gsplat has no CPU rasteriser)")
    if backend not in ("auto", "torch", "gsplat"):
        raise SplatError(f"backend must be 'auto', 'torch' or 'gsplat', got {backend!r}")
    if backend == "gsplat" or (backend == "auto" and on_cuda):
        from renderer.splat_gsplat import render_with_gsplat  # lazy: gsplat needs CUDA at run time

        rgb, alpha, depth = render_with_gsplat(gaussians, rotation, translation, fov_deg, height, width)
    else:
        # One object's samples come in ray-then-depth order already (ray_depth_order merges objects).
        samples = splat_samples(gaussians, rotation, translation, fov_deg, (height, width))
        weights = compositing_weights(samples)
        pixels = height * width
        rgb = accumulate(weights[:, None] * samples.rgb, samples.ray_ids, pixels).T.reshape(3, height, width)
        alpha = accumulate(weights, samples.ray_ids, pixels).reshape(1, height, width)
        depth_sum = accumulate(weights * samples.t, samples.ray_ids, pixels).reshape(1, height, width)
        depth = torch.where(alpha > 1e-4, depth_sum / alpha.clamp(min=1e-4), torch.zeros_like(depth_sum))
    if background is not None:
        colour = background if background.dim() == 3 else background.reshape(3, 1, 1)
        rgb = rgb + (1 - alpha) * colour
    return rgb, alpha, depth

