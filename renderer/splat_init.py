"""Where a splat's training starts: points with colours, turned into Gaussians.

From a posed image set (the outer layer of the masks' visual hull, coloured by the views), from a
textured mesh (its surface, coloured by its texture); ``renderer.splat_bake`` adds a NeRF's dense
space. :func:`gaussians_from_points` makes the Gaussians, as 3DGS starts from a point cloud.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from renderer.mesh import TexturedMesh
from renderer.object_field import grid_cell_centres, shell
from renderer.posed_images import PosedImages
from renderer.splat import Gaussians, SplatError
from renderer.splat_sh import C0
from renderer.train_object import hull_bounds, visual_hull


@torch.no_grad()
def hull_points(images: PosedImages, count: int, generator: torch.Generator,
                resolution: int = 64) -> tuple[Float[Tensor, "N 3"], Float[Tensor, "N 3"]]:
    """``count`` points in the outer layer of the masks' visual hull, each coloured by the mean of
    the pixels it projects to in the views whose mask covers it."""
    aabb = images.aabb if images.aabb is not None else hull_bounds(images)
    hull = visual_hull(images, aabb, resolution)
    cells = grid_cell_centres(aabb, resolution)[shell(hull, 2)]
    if cells.shape[0] == 0:
        raise SplatError("posed images: the masks carve away everything, no object to start a splat from")
    cell = (aabb[1] - aabb[0]) / resolution
    pick = torch.randint(0, cells.shape[0], (count,), generator=generator)
    points = cells[pick] + (torch.rand(count, 3, generator=generator) - 0.5) * cell
    return points, project_colours(images, points)


def project_colours(images: PosedImages, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
    """Mean colour of the pixels ``points`` project to, over the views whose mask covers them
    (grey where none does). Ignores occlusion: a start, not an answer."""
    total, hits = torch.zeros(points.shape[0], 3), torch.zeros(points.shape[0], 1)
    for view in range(images.c2w.shape[0]):
        rotation, position = images.c2w[view, :, :3], images.c2w[view, :, 3]
        camera = (points - position) @ rotation
        depth = -camera[:, 2].clamp(max=-1e-6)
        u = (images.fx * camera[:, 0] / depth + images.cx).long()
        v = (-images.fy * camera[:, 1] / depth + images.cy).long()
        seen = (u >= 0) & (u < images.width) & (v >= 0) & (v < images.height)
        u, v = u.clamp(0, images.width - 1), v.clamp(0, images.height - 1)
        seen &= images.alpha[view, v, u, 0] > 0.5
        total += images.rgb[view, v, u] * seen[:, None]
        hits += seen[:, None]
    return torch.where(hits > 0, total / hits.clamp(min=1), torch.full_like(total, 0.5))


def gaussians_from_points(points: Float[Tensor, "N 3"], colours: Float[Tensor, "N 3"], sh_degree: int = 1,
                          opacity: float = 0.1) -> Gaussians:
    """Isotropic Gaussians at ``points``, each as wide as the mean distance to its three nearest
    neighbours (3DGS's start), of ``opacity`` and colour ``colours`` (the SH DC term)."""
    n = points.shape[0]
    if n < 4:
        raise SplatError(f"a splat needs at least 4 starting points, got {n}")
    nearest = torch.cat([torch.cdist(chunk, points).topk(4, largest=False).values[:, 1:]
                         for chunk in points.split(2048)])
    spread = nearest.mean(dim=1).clamp(min=1e-7)
    sh = torch.zeros(n, (sh_degree + 1) ** 2, 3)
    sh[:, 0] = (colours.clamp(0, 1) - 0.5) / C0
    return Gaussians(
        means=points.float().clone(),
        log_scales=spread.log()[:, None].expand(n, 3).clone(),
        quats=torch.tensor([1.0, 0, 0, 0]).expand(n, 4).clone(),
        opacity_logits=torch.full((n,), math.log(opacity / (1 - opacity))),
        sh=sh,
    )


@torch.no_grad()
def mesh_surface_points(mesh: TexturedMesh, count: int,
                        generator: torch.Generator) -> tuple[Float[Tensor, "N 3"], Float[Tensor, "N 3"]]:
    """``count`` points spread uniformly over the mesh's surface (triangles drawn by area), each
    with the texture's colour there (nearest texel)."""
    corners = mesh.vertices[mesh.faces]  # [F, 3 corners, 3]
    area = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]).norm(dim=-1)
    if not bool(area.sum() > 0):
        raise SplatError(f"{mesh.source}: the mesh has no surface to start a splat from")
    face = torch.multinomial(area, count, replacement=True, generator=generator)
    root, r2 = torch.rand(count, generator=generator).sqrt(), torch.rand(count, generator=generator)
    weights = torch.stack([1 - root, root * (1 - r2), root * r2], dim=-1)[..., None]  # uniform in the triangle
    points = (weights * corners[face]).sum(dim=1)
    uv = (weights * mesh.uvs[mesh.faces[face]]).sum(dim=1) % 1.0
    height, width = mesh.texture.shape[:2]
    column = (uv[:, 0] * width).long().clamp(0, width - 1)
    row = ((1 - uv[:, 1]) * height).long().clamp(0, height - 1)  # OBJ's v = 0 is the bottom row
    return points, mesh.texture[row, column]
