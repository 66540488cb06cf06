"""Gaussians seen by nerfsim's camera as packed samples: the CPU splat rasteriser, plain torch.

Each Gaussian is projected with the EWA approximation of 3DGS (2D covariance ``J W Sigma W^T J^T``
plus a 0.3 px low-pass), culled behind the near plane and outside the image, and paired with the
pixels whose centres lie inside its 3-sigma ellipse and where its alpha reaches 1/255. A pair is a
sample of that pixel's ray: ``t`` is the distance along the ray to the plane through the
Gaussian's centre parallel to the image (3DGS's depth order), its optical depth ``-log(1 - alpha)`` with ``alpha = opacity * exp(-q/2)`` clamped below
0.99, and its colour the Gaussian's SH colour for the direction from the camera. Compositing the
pairs with ``renderer.raymarch`` (sorted per pixel by ``t``) is 3DGS's front-to-back blend, and
merges exactly with NeRF samples in a scene.

Differentiable w.r.t. the Gaussians, the rotation and the translation (through centres, 2D
covariances, opacities, colours and ``t``). Not differentiable: which pairs exist (the near-plane
and image culling, the 3-sigma footprint and the 1/255 alpha cut are thresholds), the 0.99 alpha
clamp where it binds, and the depth order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from renderer.camera import focal_length
from renderer.raymarch import PackedSamples
from renderer.splat_sh import sh_colour

if TYPE_CHECKING:
    from renderer.splat import Gaussians

ALPHA_MIN = 1.0 / 255
"""Pairs fainter than this are dropped (as in 3DGS)."""
ALPHA_MAX = 0.99
"""Per-pair alpha is clamped below this (as in 3DGS), so the optical depth stays finite."""
LOW_PASS = 0.3
"""Added to the 2D covariance's diagonal, pixels^2: every Gaussian covers about a pixel."""
NEAR = 0.01
"""Gaussians whose centre is closer to the camera plane than this (metres) are culled."""
SIGMA_CUTOFF = 3.0
"""A Gaussian's footprint: pixels within this many standard deviations of its centre."""
CHUNK_PAIRS = 1 << 22
"""Candidate pairs tested at once; bounds the rasteriser's temporary memory."""


def image_shape(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from a square side or a (height, width) pair."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def splat_samples(
    gaussians: "Gaussians",
    rotation: Float[Tensor, "3 3"],
    translation: Float[Tensor, "3"],
    fov_deg: float,
    size: int | tuple[int, int],
) -> PackedSamples:
    """Every (Gaussian, pixel) pair of one view as a packed sample; ``ray_ids`` are pixel
    indices ``row * width + column``, in no particular order (sort with ``ray_depth_order``)."""
    height, width = image_shape(size)
    focal = focal_length(max(height, width), fov_deg)
    # Cull behind the near plane first: the projection divides by the depth.
    with torch.no_grad():
        depth_all = -(gaussians.means @ rotation[2] + translation[2])
        front = (depth_all > NEAR).nonzero().squeeze(-1)
    if front.numel() == 0:
        return PackedSamples.empty(gaussians.means.device)
    g = gaussians.take(front)
    centres = g.means @ rotation.T + translation
    z = -centres[:, 2]
    x_over_z, y_over_z = centres[:, 0] / z, centres[:, 1] / z
    u = width / 2 + focal * x_over_z
    v = height / 2 - focal * y_over_z
    # EWA: Jacobian of (u, v) w.r.t. the camera-frame point, with x/z and y/z clamped to 1.3x
    # the field of view (as 3DGS) so Gaussians far off-screen do not blow up.
    limit_x, limit_y = 1.3 * width / 2 / focal, 1.3 * height / 2 / focal
    tx, ty = x_over_z.clamp(-limit_x, limit_x), y_over_z.clamp(-limit_y, limit_y)
    zero = torch.zeros_like(z)
    jacobian = torch.stack(
        [torch.stack([focal / z, zero, focal * tx / z], -1), torch.stack([zero, -focal / z, -focal * ty / z], -1)], -2
    )
    jw = jacobian @ rotation
    cov2d = jw @ g.covariances() @ jw.transpose(-1, -2)
    a, b, c = cov2d[:, 0, 0] + LOW_PASS, cov2d[:, 0, 1], cov2d[:, 1, 1] + LOW_PASS
    det = a * c - b * b
    conic = torch.stack([c / det, -b / det, a / det], dim=-1)
    opacity = torch.sigmoid(g.opacity_logits)
    camera_position = -rotation.T @ translation
    colour = sh_colour(g.sh, g.means - camera_position)

    gauss, pixel_x, pixel_y = _footprint_pairs(
        u.detach(), v.detach(), a.detach(), c.detach(), conic.detach(), opacity.detach(), height, width
    )
    du = pixel_x + 0.5 - u[gauss]
    dv = pixel_y + 0.5 - v[gauss]
    k = conic[gauss]
    q = k[:, 0] * du * du + 2 * k[:, 1] * du * dv + k[:, 2] * dv * dv
    alpha = (opacity[gauss] * torch.exp(-0.5 * q)).clamp(max=ALPHA_MAX)
    # Distance along the pixel's ray to the plane through the centre parallel to the image:
    # per pixel the order of 3DGS's view-space z, and what gsplat's expected depth measures.
    stretch = torch.sqrt(1 + ((pixel_x + 0.5 - width / 2) / focal) ** 2 + ((pixel_y + 0.5 - height / 2) / focal) ** 2)
    t = z[gauss] * stretch
    return PackedSamples(
        ray_ids=pixel_y.long() * width + pixel_x.long(), t=t, optical_depth=-torch.log1p(-alpha), rgb=colour[gauss]
    )


@torch.no_grad()
def _footprint_pairs(
    u: Tensor, v: Tensor, var_x: Tensor, var_y: Tensor, conic: Tensor, opacity: Tensor, height: int, width: int
) -> tuple[Int[Tensor, "P"], Float[Tensor, "P"], Float[Tensor, "P"]]:
    """(Gaussian, pixel column, pixel row) of the pixels inside each Gaussian's 3-sigma ellipse
    where its alpha is at least ALPHA_MIN: candidates are the pixels of the ellipse's bounding
    box clipped to the image, generated flat (no Python loop over Gaussians) in chunks."""
    reach_x, reach_y = SIGMA_CUTOFF * var_x.sqrt(), SIGMA_CUTOFF * var_y.sqrt()
    # Pixel j's centre is j + 0.5: the columns whose centres lie within reach of u.
    x0 = torch.ceil(u - reach_x - 0.5).clamp(min=0)
    x1 = torch.floor(u + reach_x - 0.5).clamp(max=width - 1)
    y0 = torch.ceil(v - reach_y - 0.5).clamp(min=0)
    y1 = torch.floor(v + reach_y - 0.5).clamp(max=height - 1)
    cols, rows = (x1 - x0 + 1).clamp(min=0).long(), (y1 - y0 + 1).clamp(min=0).long()
    counts = cols * rows
    ends = torch.cumsum(counts, 0)
    # Log of the peak opacity over ALPHA_MIN bounds q from above (alpha >= ALPHA_MIN).
    max_q = torch.minimum(2 * torch.log(opacity / ALPHA_MIN).clamp(min=0), torch.full_like(opacity, SIGMA_CUTOFF**2))
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    first, total = 0, int(ends[-1]) if ends.numel() else 0
    done = 0
    while done < total:
        last = int(torch.searchsorted(ends, done + CHUNK_PAIRS, right=True))
        last = max(last, first + 1)
        chunk = torch.arange(first, last, device=u.device)
        gauss = torch.repeat_interleave(chunk, counts[first:last])
        local = torch.arange(gauss.numel(), device=u.device) - (ends[gauss] - counts[gauss] - done)
        px = x0[gauss] + local % cols[gauss]
        py = y0[gauss] + torch.div(local, cols[gauss], rounding_mode="floor")
        du, dv = px + 0.5 - u[gauss], py + 0.5 - v[gauss]
        k = conic[gauss]
        q = k[:, 0] * du * du + 2 * k[:, 1] * du * dv + k[:, 2] * dv * dv
        keep = (q <= max_q[gauss]).nonzero().squeeze(-1)
        parts.append((gauss[keep], px[keep], py[keep]))
        done, first = int(ends[last - 1]), last
    if not parts:
        empty = u.new_zeros(0)
        return empty.long(), empty, empty
    return tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[return-value]
