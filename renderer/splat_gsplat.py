"""``render_gaussians`` on CUDA through ``gsplat.rasterization`` (imported only here, lazily).

gsplat takes OpenCV camera axes (x right, y down, looking down +z) and returns the expected
z-depth; nerfsim uses OpenGL axes and the distance along the ray, so both are converted here.
Its kernels follow 3DGS with two small differences from the torch path: alpha is clamped at
0.999 (not 0.99) and a Gaussian's footprint is the tiles its 3-sigma square touches (not the
3-sigma ellipse), so the two agree to about 1% of a Gaussian's peak opacity at footprint rims.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from renderer.camera import band_origin, focal_length
from renderer.splat import Gaussians, SplatError
from renderer.splat_raster import LOW_PASS, NEAR


def render_with_gsplat(
    gaussians: Gaussians,
    rotation: Float[Tensor, "3 3"],
    translation: Float[Tensor, "3"],
    fov_deg: float,
    height: int,
    width: int,
) -> tuple[Float[Tensor, "3 H W"], Float[Tensor, "1 H W"], Float[Tensor, "1 H W"]]:
    """Premultiplied rgb, alpha and ray-distance depth of one view (see ``render_gaussians``)."""
    try:
        from gsplat import rasterization
    except ImportError as error:  # pragma: no cover - gsplat ships with nerfstudio
        raise SplatError(f"the gsplat backend needs the gsplat package ({error})") from error
    device, out_dtype = gaussians.means.device, gaussians.means.dtype
    # gsplat's kernels are float32 only.
    gaussians, rotation, translation = gaussians.to(dtype=torch.float32), rotation.float(), translation.float()
    dtype = torch.float32
    focal = focal_length(max(height, width), fov_deg)
    # OpenGL -> OpenCV camera axes: flip y and z.
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], device=device, dtype=dtype))
    viewmat = torch.eye(4, device=device, dtype=dtype)
    viewmat[:3, :3] = flip @ rotation
    viewmat[:3, 3] = flip @ translation
    top, left = band_origin((height, width))  # the band of the longer side's square (renderer.camera)
    centre = max(height, width) / 2
    intrinsics = torch.tensor([[focal, 0, centre - left], [0, focal, centre - top], [0, 0, 1]], device=device, dtype=dtype)
    colours, alphas, _ = rasterization(
        gaussians.means,
        gaussians.quats,
        torch.exp(gaussians.log_scales),
        torch.sigmoid(gaussians.opacity_logits),
        gaussians.sh,
        viewmat[None],
        intrinsics[None],
        width,
        height,
        near_plane=NEAR,
        eps2d=LOW_PASS,
        sh_degree=gaussians.degree,
        render_mode="RGB+ED",
        packed=False,
    )
    rgb = colours[0, ..., :3].permute(2, 0, 1)
    alpha = alphas[0].permute(2, 0, 1)
    # Expected z-depth -> distance along each pixel's ray: z * |(x/f, y/f, 1)|.
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5 - width / 2) / focal
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5 - height / 2) / focal
    stretch = torch.sqrt(1 + xs[None, :] ** 2 + ys[:, None] ** 2)
    depth = colours[0, ..., 3] * stretch
    depth = torch.where(alpha[0] > 1e-4, depth, torch.zeros_like(depth))[None]
    return rgb.to(out_dtype), alpha.to(out_dtype), depth.to(out_dtype)
