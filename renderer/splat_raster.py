"""Gaussians seen by nerfsim's camera as packed samples: the CPU splat rasteriser, plain torch.

Each Gaussian is projected with the EWA approximation of 3DGS (2D covariance ``J W Sigma W^T J^T``
plus a 0.3 px low-pass), culled behind the near plane and outside the image, and paired with the
pixels whose centres lie inside its 3-sigma ellipse and where its alpha reaches 1/255. A pair is
a sample of that pixel's ray: ``t`` is the distance along the ray to the plane through the
Gaussian's centre parallel to the image (3DGS's depth order), its optical depth is
``-log(1 - alpha)`` with ``alpha = opacity * exp(-q/2)`` clamped below 0.99, and its colour is
the Gaussian's SH colour for the direction from the camera. Compositing the pairs with
``renderer.raymarch`` (per pixel, front to back) is 3DGS's blend, and merges exactly with NeRF
samples in a scene. As in 3DGS, a pixel stops before the pair that would take its
transmittance to 1e-4 (early termination).

Speed: the pairs are found without gradients: row spans of each ellipse expanded flat (no
Python loop over Gaussians), Gaussians taken in depth slices front to back so that a stable
integer sort by pixel orders them (no float sort; on CPU one numpy sort of packed int64 keys),
and what lies behind pixels already closed by earlier slices is dropped before the sort: whole
Gaussians by their footprint box, whole row spans, then single pairs. With gradients enabled
the surviving pairs are evaluated once more, on the autograd graph.

Differentiable w.r.t. the Gaussians, the rotation and the translation (through centres, 2D
covariances, opacities, colours and ``t``). Not differentiable: which pairs exist (the
near-plane and image culling, the 3-sigma footprint, the 1/255 alpha cut and early termination
are thresholds), the 0.99 alpha clamp where it binds, and the depth order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from renderer.camera import band_origin, focal_length, image_shape
from renderer.raymarch import PackedSamples, transmittance_before
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
T_MIN = 1e-4
"""A pixel stops before the pair that would take its transmittance to this or below (3DGS)."""
MAX_SLICES = 8
"""Gaussians are rasterised in up to this many slices by depth, front to back (see _visible_pairs)."""
SLICE_PAIRS = 250_000
"""About this many candidate pairs per slice (fewer slices cost less overhead, more cull more)."""
CHUNK_PAIRS = 1 << 22
"""Candidate pairs tested at once; bounds the rasteriser's temporary memory."""


def splat_samples(
    gaussians: "Gaussians",
    rotation: Float[Tensor, "3 3"],
    translation: Float[Tensor, "3"],
    fov_deg: float,
    size: int | tuple[int, int],
) -> PackedSamples:
    """Every contributing (Gaussian, pixel) pair of one view as a packed sample; ``ray_ids``
    are pixel indices ``row * width + column``. Ordered like ``march_field``'s samples: by
    pixel, then front to back, ready for ``compositing_weights``."""
    height, width = image_shape(size)
    p = project(gaussians, rotation, translation, fov_deg, size)
    if p is None:
        return PackedSamples.empty(gaussians.means.device)
    u, v, a, c, conic, opacity, z, colour = p.u, p.v, p.var_x, p.var_y, p.conic, p.opacity, p.z, p.colour
    with torch.no_grad():
        gauss, pixel, tau = _visible_pairs(u, v, a, c, conic, opacity, z, height, width)
    if torch.is_grad_enabled():  # the pair search ran without gradients: evaluate alpha again with them
        pixel_x, pixel_y = (pixel % width).to(u.dtype), torch.div(pixel, width, rounding_mode="floor").to(u.dtype)
        du, dv = pixel_x + 0.5 - _at(u, gauss), pixel_y + 0.5 - _at(v, gauss)
        k = _at(conic, gauss)
        q = k[:, 0] * du * du + 2 * k[:, 1] * du * dv + k[:, 2] * dv * dv
        tau = -torch.log1p(-(_at(opacity, gauss) * torch.exp(-0.5 * q)).clamp(max=ALPHA_MAX))
    stretch = ray_stretch(size, fov_deg, u.dtype, u.device)
    return PackedSamples(ray_ids=pixel, t=_at(z, gauss) * _at(stretch, pixel), optical_depth=tau, rgb=_at(colour, gauss))


@dataclass
class Projected:
    """The Gaussians in front of the near plane as seen by one camera (differentiable)."""

    front: Int[Tensor, "N"]
    """Indices of these Gaussians among the splat's."""
    u: Float[Tensor, "N"]
    """Column of the centre, pixels (the image's left edge is 0)."""
    v: Float[Tensor, "N"]
    """Row of the centre, pixels (the top edge is 0)."""
    var_x: Float[Tensor, "N"]
    """Variance of the 2D Gaussian along x (across columns), pixels^2, low-pass included."""
    var_y: Float[Tensor, "N"]
    """Variance along y (across rows), pixels^2, low-pass included."""
    conic: Float[Tensor, "N 3"]
    """Inverse 2D covariance as (a, b, c): q = a du^2 + 2 b du dv + c dv^2."""
    opacity: Float[Tensor, "N"]
    """Peak opacity."""
    z: Float[Tensor, "N"]
    """Depth of the centre in front of the camera, metres."""
    colour: Float[Tensor, "N 3"]
    """SH colour seen from the camera."""


def project(
    gaussians: "Gaussians", rotation: Float[Tensor, "3 3"], translation: Float[Tensor, "3"], fov_deg: float,
    size: int | tuple[int, int], covariances: Float[Tensor, "N 3 3"] | None = None,
) -> Projected | None:
    """EWA projection of the Gaussians in front of the near plane (None: there are none).
    ``covariances``: the Gaussians' own, where already computed (views of one splat share them)."""
    height, width = image_shape(size)
    focal = focal_length(max(height, width), fov_deg)
    # Cull behind the near plane first: the projection divides by the depth.
    with torch.no_grad():
        depth_all = -(gaussians.means @ rotation[2] + translation[2])
        front = (depth_all > NEAR).nonzero().squeeze(-1)
    if front.numel() == 0:
        return None
    everything = front.numel() == gaussians.num  # no copy of the Gaussians then (the same values)
    g = gaussians if everything else gaussians.take(front)
    if covariances is None:
        covariances = g.covariances()
    elif not everything:
        covariances = covariances.index_select(0, front)
    centres = g.means @ rotation.T + translation
    z = -centres[:, 2]
    x_over_z, y_over_z = centres[:, 0] / z, centres[:, 1] / z
    # The principal point of the band of the longer side's square (renderer.camera).
    top, left = band_origin(size)
    u = max(height, width) / 2 - left + focal * x_over_z
    v = max(height, width) / 2 - top - focal * y_over_z
    # EWA: Jacobian of (u, v) w.r.t. the camera-frame point, with x/z and y/z clamped to 1.3x
    # the field of view (as 3DGS) so Gaussians far off-screen do not blow up; the field of view
    # of the longer side's square, so that a band renders as the centre of the square image.
    limit_x = limit_y = 1.3 * max(height, width) / 2 / focal
    tx, ty = x_over_z.clamp(-limit_x, limit_x), y_over_z.clamp(-limit_y, limit_y)
    zero = torch.zeros_like(z)
    jacobian = torch.stack(
        [torch.stack([focal / z, zero, focal * tx / z], -1), torch.stack([zero, -focal / z, -focal * ty / z], -1)], -2
    )
    jw = jacobian @ rotation
    cov2d = jw @ covariances @ jw.transpose(-1, -2)
    a, b, c = cov2d[:, 0, 0] + LOW_PASS, cov2d[:, 0, 1], cov2d[:, 1, 1] + LOW_PASS
    det = a * c - b * b
    conic = torch.stack([c / det, -b / det, a / det], dim=-1)
    opacity = torch.sigmoid(g.opacity_logits)
    camera_position = -rotation.T @ translation
    colour = sh_colour(g.sh, g.means - camera_position)
    return Projected(front, u, v, a, c, conic, opacity, z, colour)


def ray_stretch(
    size: int | tuple[int, int], fov_deg: float, dtype: torch.dtype, device: torch.device
) -> Float[Tensor, "P"]:
    """Per pixel, the distance along its ray to the plane at depth 1 parallel to the image:
    ``t = z * stretch`` is per pixel the order of 3DGS's view-space z, and what gsplat's
    expected depth measures."""
    height, width = image_shape(size)
    focal = focal_length(max(height, width), fov_deg)
    top, left = band_origin(size)
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5 - (max(height, width) / 2 - left)) / focal
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5 - (max(height, width) / 2 - top)) / focal
    return torch.sqrt(1 + xs[None, :] ** 2 + ys[:, None] ** 2).reshape(-1)


def footprints(
    u: Tensor, v: Tensor, var_x: Tensor, var_y: Tensor, opacity: Tensor, height: int, width: int
) -> tuple[Float[Tensor, "N"], Int[Tensor, "N 4"]]:
    """Each Gaussian's ``q_max`` (a pair counts where q <= q_max: within 3 sigma and alpha =
    opacity exp(-q/2) >= ALPHA_MIN) and the pixel box x0 y0 x1 y1 around that ellipse."""
    q_max = torch.minimum(2 * torch.log(opacity / ALPHA_MIN).clamp(min=0), torch.full_like(opacity, SIGMA_CUTOFF**2))
    return q_max, _footprint_boxes(u, v, q_max * var_x, q_max * var_y, height, width)


def _visible_pairs(
    u: Tensor, v: Tensor, var_x: Tensor, var_y: Tensor, conic: Tensor, opacity: Tensor, z: Tensor, height: int, width: int
) -> tuple[Int[Tensor, "P"], Int[Tensor, "P"], Float[Tensor, "P"]]:
    """(Gaussian, pixel, optical depth) of the pairs that contribute, ordered by pixel, then
    front to back.

    Gaussians are taken in slices by depth, front to back (more slices for more candidate
    pairs, up to MAX_SLICES); within a slice one stable sort by pixel leaves each pixel's pairs
    in depth order. As in 3DGS, a pixel stops at the pair that would take its transmittance to
    T_MIN or below, and a slice skips the Gaussians whose footprint box holds no pixel still
    open, the row spans without an open pixel and the pairs of closed pixels (exact occlusion
    culling: hidden Gaussians cost nothing).
    """
    q_max, boxes = footprints(u, v, var_x, var_y, opacity, height, width)
    area = ((boxes[:, 2] - boxes[:, 0] + 1).clamp(min=0) * (boxes[:, 3] - boxes[:, 1] + 1).clamp(min=0)).sum()
    slices = int(min(MAX_SLICES, max(1, int(area) // SLICE_PAIRS)))
    depth_so_far = u.new_zeros(height * width)
    done = torch.zeros(height * width, dtype=torch.bool, device=u.device)
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    row_open = None
    for batch in torch.argsort(z).tensor_split(slices):
        if parts:  # open pixels per row up to each column: [H, W + 1]
            row_open = torch.nn.functional.pad((~done).reshape(height, width).cumsum(1, dtype=torch.int32), (1, 0))
            batch = batch[_sees_open_pixels(_at(boxes, batch), row_open)]
        gauss, pixel, alpha = _ellipse_pairs(
            _at(boxes, batch), _at(u, batch), _at(v, batch), _at(conic, batch), _at(opacity, batch), _at(q_max, batch),
            row_open, width,
        )
        if parts:  # pairs of pixels closed by earlier slices go before the sort
            open_pairs = (~_at(done, pixel)).nonzero().squeeze(-1)
            gauss, pixel, alpha = _at(gauss, open_pairs), _at(pixel, open_pairs), _at(alpha, open_pairs)
        pixel, by_pixel = stable_sort(pixel)
        gauss, alpha = _at(gauss, by_pixel), _at(alpha, by_pixel)
        # log1p in float64: several times faster than float32's on CPU, and as exact.
        tau = -torch.log1p(-alpha.double()).to(alpha.dtype)
        within = transmittance_before(PackedSamples(pixel, tau, tau, tau.new_zeros(0, 3)))
        # As 3DGS: a pixel stops before the pair that would take its transmittance to T_MIN.
        stops = within * (1 - alpha) * torch.exp(-_at(depth_so_far, pixel)) <= T_MIN
        done[pixel[stops]] = True
        keep = (~stops).nonzero().squeeze(-1)
        pixel, tau = _at(pixel, keep), _at(tau, keep)
        depth_so_far.index_add_(0, pixel, tau)
        parts.append((_at(batch, _at(gauss, keep)), pixel, tau))
    gauss, pixel, tau = parts[0] if len(parts) == 1 else (torch.cat(p) for p in zip(*parts))
    if len(parts) > 1:
        pixel, by_pixel = stable_sort(pixel)  # stable: slices stay front to back
        gauss, tau = _at(gauss, by_pixel), _at(tau, by_pixel)
    return gauss.long(), pixel.long(), tau


def _footprint_boxes(u: Tensor, v: Tensor, reach2_x: Tensor, reach2_y: Tensor, height: int, width: int) -> Int[Tensor, "N 4"]:
    """Inclusive pixel boxes x0 y0 x1 y1 of the pixel centres (j + 0.5) within sqrt(reach2) of
    each centre, clipped to the image (empty where x1 < x0 or y1 < y0)."""
    reach_x, reach_y = reach2_x.sqrt(), reach2_y.sqrt()
    x0 = torch.ceil(u - reach_x - 0.5).clamp(0, width)
    x1 = torch.floor(u + reach_x - 0.5).clamp(-1, width - 1)
    y0 = torch.ceil(v - reach_y - 0.5).clamp(0, height)
    y1 = torch.floor(v + reach_y - 0.5).clamp(-1, height - 1)
    return torch.stack([x0, y0, x1, y1], dim=-1).long()


def _sees_open_pixels(boxes: Int[Tensor, "N 4"], row_open: Tensor) -> Tensor:
    """Whether each box holds an open pixel, from an integral image of the open pixels (made
    from ``row_open``, their counts per row up to each column, [H, W + 1])."""
    integral = torch.nn.functional.pad(row_open.cumsum(0), (0, 0, 1, 0))
    x0, y0, x1, y1 = boxes.unbind(-1)
    x1, y1 = torch.maximum(x1 + 1, x0), torch.maximum(y1 + 1, y0)
    return (integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]) > 0


def _ellipse_pairs(
    boxes: Int[Tensor, "N 4"], u: Tensor, v: Tensor, conic: Tensor, opacity: Tensor, q_max: Tensor,
    row_open: Tensor | None, width: int,
) -> tuple[Int[Tensor, "P"], Int[Tensor, "P"], Float[Tensor, "P"]]:
    """(Gaussian, pixel, alpha) for the pixel centres where ``q <= q_max``, Gaussian by
    Gaussian, generated flat (no Python loop over Gaussians): first each Gaussian's row spans
    of its ellipse (a quadratic in the column offset per row), then their pixels, in chunks of
    CHUNK_PAIRS. Spans without an open pixel are skipped whole (``row_open``: the open pixels
    per row up to each column, [H, W + 1]; None: all open). Indices are int32 (images hold fewer than 2^31 pixels)."""
    _, y0, _, y1 = boxes.unbind(-1)
    rows = (y1 - y0 + 1).clamp(min=0)
    seg_gauss = torch.repeat_interleave(torch.arange(u.numel(), device=u.device), rows)
    seg_y = _at(y0, seg_gauss) + torch.arange(seg_gauss.numel(), device=u.device) - _at(torch.cumsum(rows, 0) - rows, seg_gauss)
    dv = seg_y + 0.5 - _at(v, seg_gauss)
    a, b, c = _at(conic, seg_gauss).unbind(-1)
    b_dv, c_dv2 = b * dv, c * dv * dv
    # q(du) = a du^2 + 2 b dv du + c dv^2 <= q_max between the roots in du.
    root = torch.sqrt((b_dv * b_dv - a * (c_dv2 - _at(q_max, seg_gauss))).clamp(min=0))
    centre = _at(u, seg_gauss)
    x0 = torch.ceil(centre + (-b_dv - root) / a - 0.5).clamp(min=0)
    x1 = torch.floor(centre + (-b_dv + root) / a - 0.5).clamp(max=width - 1)
    lengths = (x1 - x0 + 1).clamp(min=0).long()
    if row_open is not None:  # occlusion culling by row span: count its open pixels by prefix sums
        row_open = row_open.reshape(-1)
        row_start = seg_y * (width + 1)
        x0_long = x0.long().clamp(max=width)
        seen = _at(row_open, row_start + (x0_long + lengths).clamp(max=width)) - _at(row_open, row_start + x0_long)
        lengths = torch.where(seen > 0, lengths, 0)
    # log alpha at column x0 + k of the span is a quadratic in k: k0 + k (k1 + k k2).
    du0 = x0 + 0.5 - centre
    k0 = _at(torch.log(opacity), seg_gauss) - 0.5 * ((a * du0 + 2 * b_dv) * du0 + c_dv2)
    k1, k2 = -(a * du0 + b_dv), -0.5 * a
    base = (seg_y * width + x0.long()).int()
    seg_gauss = seg_gauss.int()
    ends = torch.cumsum(lengths, 0)
    starts = (ends - lengths).int()
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    first, done, total = 0, 0, int(ends[-1]) if ends.numel() else 0
    while done < total:
        last = max(int(torch.searchsorted(ends, done + CHUNK_PAIRS, right=True)), first + 1)
        seg = torch.repeat_interleave(torch.arange(first, last, device=u.device, dtype=torch.int32), lengths[first:last])
        col = torch.arange(done, done + seg.numel(), device=u.device, dtype=torch.int32) - _at(starts, seg)
        k = col.to(u.dtype)
        alpha = torch.exp(_at(k0, seg) + k * (_at(k1, seg) + k * _at(k2, seg))).clamp(max=ALPHA_MAX)
        parts.append((_at(seg_gauss, seg), _at(base, seg) + col, alpha))
        done, first = int(ends[last - 1]), last
    if not parts:
        empty = torch.zeros(0, dtype=torch.int32, device=u.device)
        return empty, empty, u.new_zeros(0)
    return parts[0] if len(parts) == 1 else tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[return-value]


def stable_sort(keys: Int[Tensor, "P"]) -> tuple[Int[Tensor, "P"], Int[Tensor, "P"]]:
    """``torch.sort(keys, stable=True)`` of non-negative int32 keys. On CPU as one numpy sort of
    the int64 ``key << bits | position`` (unique, so any sort is stable), 2-3x faster than
    torch's stable sort there; the permutation comes back as int64."""
    if keys.device.type != "cpu" or keys.numel() == 0:
        return torch.sort(keys, stable=True)
    bits = (keys.numel() - 1).bit_length()
    packed = torch.from_numpy(np.sort(((keys.long() << bits) | torch.arange(keys.numel())).numpy()))
    return (packed >> bits).to(keys.dtype), packed & ((1 << bits) - 1)


def _at(values: Tensor, index: Tensor) -> Tensor:
    """``values[index]`` along the first axis: ``index_select`` is several times faster on CPU
    than advanced indexing for the long index lists here."""
    return values.index_select(0, index)
