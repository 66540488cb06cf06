"""Real spherical harmonics up to degree 3 in the 3DGS convention (the Inria code's constants and
signs; gsplat and nerfstudio's splatfacto use the same basis), and their rotation."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
      1.445305721320277, -0.5900435899266435)


def sh_basis(degree: int, directions: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch K"]:
    """The K = (degree + 1)^2 basis functions at unit ``directions``."""
    x, y, z = directions.unbind(-1)
    values = [torch.full_like(x, C0)]
    if degree > 0:
        values += [-C1 * y, C1 * z, -C1 * x]
    if degree > 1:
        xx, yy, zz = x * x, y * y, z * z
        values += [C2[0] * x * y, C2[1] * y * z, C2[2] * (2 * zz - xx - yy), C2[3] * x * z, C2[4] * (xx - yy)]
    if degree > 2:
        values += [
            C3[0] * y * (3 * xx - yy), C3[1] * x * y * z, C3[2] * y * (4 * zz - xx - yy),
            C3[3] * z * (2 * zz - 3 * xx - 3 * yy), C3[4] * x * (4 * zz - xx - yy), C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(values, dim=-1)


def sh_colour(sh: Float[Tensor, "N K 3"], directions: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
    """3DGS colour ``max(0.5 + sum_k sh_k Y_k(d), 0)`` for view directions ``d`` (normalised here)."""
    degree = round(sh.shape[1] ** 0.5) - 1
    basis = sh_basis(degree, torch.nn.functional.normalize(directions, dim=-1))
    return (torch.einsum("nk,nkc->nc", basis, sh) + 0.5).clamp(min=0)


def rotate_sh(sh: Float[Tensor, "N K 3"], rotation: Float[Tensor, "3 3"]) -> Float[Tensor, "N K 3"]:
    """Coefficients of the same colours after the object is rotated by ``rotation``:
    ``colour'(d) = colour(rotation^T d)``.

    Each degree's basis spans a rotation-invariant space, so the map is one (2l+1)-square matrix
    per degree, found exactly (to rounding) by least squares over a few dozen directions.
    """
    degree = round(sh.shape[1] ** 0.5) - 1
    if degree == 0:
        return sh.clone()
    generator = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(64, 3, generator=generator, dtype=torch.float64), dim=-1)
    rotation = rotation.to(torch.float64).cpu()
    new_basis = sh_basis(degree, directions)
    old_basis = sh_basis(degree, directions @ rotation)  # rows: rotation^T d
    out = sh.clone()
    for level in range(1, degree + 1):
        band = slice(level * level, (level + 1) * (level + 1))
        mix = torch.linalg.lstsq(new_basis[:, band], old_basis[:, band]).solution  # new @ mix = old
        out[:, band] = torch.einsum("jk,nkc->njc", mix.to(sh), sh[:, band])
    return out
