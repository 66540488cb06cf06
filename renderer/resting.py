"""Stable resting poses of an object on a horizontal support plane, from its geometry.

An object dropped on a table comes to rest on a face of its convex hull whose plane has the
centre of mass above the inside of the face. The standard quasi-static estimate of how often
it lands on face f is the solid angle f subtends at the centre of mass over 4 pi (Wiegley et
al. 1996; Kriegman 1997); faces that are not stable roll over, so the probabilities are
renormalised over the stable ones. Coplanar hull triangles are merged into one face first.

A pose is the rotation that puts its face down (object frame -> resting frame, y up, the face's
outward normal along -y) and the height of the object's origin (its bounding-box centre) above
the support plane. The canonical pose is the asset's own y-up orientation (how it stood when
captured): pose id -1, the identity, resting on its lowest point. Captured objects are usually
photographed standing as captured, so it gets ``canonical_pose_share`` of the probability and
the other poses share the rest by their geometric probabilities.

Points come from the object's radiance field (its opaque cells, :func:`occupied_points`) or a
mesh's vertices; the centre of mass is their mean (uniform density over the occupied volume).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from scipy.spatial import ConvexHull, QhullError
from torch import Tensor, nn

from renderer.splat import SplatObject
from renderer.splat_asset import opaque_centres


class RestingError(ValueError):
    """A bad input to the resting-pose computation (names the field)."""


@dataclass(frozen=True)
class RestingConfig:
    """How the pose table of an object is built."""

    canonical_pose_share: float = 1.0
    """Probability of the canonical pose (the asset's own y-up, as captured); the other poses
    split the rest in proportion to their geometric probabilities (all of it goes to the
    canonical pose when the object has no other stable face)."""
    max_poses: int = 6
    """Most non-canonical poses kept (the most probable ones)."""
    min_probability: float = 0.01
    """Stable faces less likely than this (e.g. the tiny bevels of a voxelised corner) are left out."""
    coplanar_deg: float = 3.0
    """Hull triangles whose normals differ by less than this are merged into one face; a face
    this close to the canonical bottom (normal -y) is the canonical pose itself."""
    shadow_points: int = 256
    """Occupied points kept per object (evenly subsampled) for the renderer's contact shadows."""

    def __post_init__(self) -> None:
        if not 0 <= self.canonical_pose_share <= 1:
            raise RestingError(f"RestingConfig.canonical_pose_share: must be in [0, 1], got {self.canonical_pose_share}")
        if not 0 <= self.min_probability < 1:
            raise RestingError(f"RestingConfig.min_probability: must be in [0, 1), got {self.min_probability}")
        if self.max_poses < 0:
            raise RestingError(f"RestingConfig.max_poses: must be >= 0, got {self.max_poses}")
        if not 0 < self.coplanar_deg < 45:
            raise RestingError(f"RestingConfig.coplanar_deg: must be in (0, 45), got {self.coplanar_deg}")
        if self.shadow_points < 1:
            raise RestingError(f"RestingConfig.shadow_points: must be >= 1, got {self.shadow_points}")


@dataclass
class PoseTable:
    """The resting poses of one object: the canonical one (id -1) and P others (ids 0..P-1)."""

    rotations: Float[Tensor, "P 3 3"]
    """Object frame -> resting frame (y up) of each non-canonical pose."""
    heights: Float[Tensor, "P"]
    """Height of the object's origin above the support plane in each pose (metres)."""
    com_heights: Float[Tensor, "P"]
    """Height of the centre of mass above the support plane in each pose."""
    geometric: Float[Tensor, "P"]
    """Each pose's quasi-static probability, over all stable faces including the canonical one."""
    canonical_height: float
    """Height of the origin above the plane in the canonical pose (its lowest point on it)."""
    canonical_geometric: float
    """The canonical pose's quasi-static probability (0 when its bottom is not a stable face)."""
    canonical_share: float
    """Probability given to the canonical pose (RestingConfig.canonical_pose_share, or 1 when
    there is no other pose)."""
    points: Float[Tensor, "N 3"]
    """Object-frame occupied points (subsampled) that cast the contact shadow."""

    @property
    def num_poses(self) -> int:
        return int(self.rotations.shape[0])

    def choice_probs(self) -> list[float]:
        """Probabilities of the canonical pose, then of poses 0..P-1 (they sum to 1)."""
        if self.num_poses == 0:
            return [1.0]
        rest = self.geometric / self.geometric.sum()
        return [self.canonical_share, *((1 - self.canonical_share) * rest).tolist()]

    def rotation(self, pose_id: int) -> Tensor:
        return torch.eye(3) if pose_id < 0 else self.rotations[pose_id]

    def height(self, pose_id: int) -> float:
        return self.canonical_height if pose_id < 0 else float(self.heights[pose_id])


def rotation_to_down(normal: np.ndarray) -> np.ndarray:
    """The rotation taking unit ``normal`` to -y by the shortest arc (Rodrigues), so the face
    goes down with the least turn about the vertical."""
    down = np.array([0.0, -1.0, 0.0])
    axis = np.cross(normal, down)
    sin, cos = np.linalg.norm(axis), float(normal @ down)
    if sin < 1e-9:
        # Already down, or straight up: turn half a revolution about x.
        return np.eye(3) if cos > 0 else np.diag([1.0, -1.0, -1.0])
    k = axis / sin
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + sin * cross + (1 - cos) * cross @ cross


def _solid_angles(triangles: np.ndarray, apex: np.ndarray) -> np.ndarray:
    """Solid angle of each triangle (T 3 3) seen from ``apex`` (Van Oosterom & Strackee 1983)."""
    a, b, c = (triangles[:, i] - apex for i in range(3))
    la, lb, lc = (np.linalg.norm(v, axis=-1) for v in (a, b, c))
    numerator = np.abs(np.einsum("ti,ti->t", a, np.cross(b, c)))
    denominator = la * lb * lc + np.einsum("ti,ti->t", a, b) * lc + np.einsum("ti,ti->t", a, c) * lb + np.einsum("ti,ti->t", b, c) * la
    return 2 * np.arctan2(numerator, denominator)


def _inside(polygon: np.ndarray, point: np.ndarray, normal: np.ndarray) -> bool:
    """Whether ``point`` projects strictly inside the convex hull of the coplanar ``polygon``
    points (a margin of 1% of the face's size: a centre of mass on an edge tips over)."""
    u = np.cross(normal, [1.0, 0.0, 0.0] if abs(normal[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    flat = np.stack([polygon @ u, polygon @ v], axis=-1)
    target = np.array([point @ u, point @ v])
    try:
        hull = ConvexHull(flat)
    except QhullError:
        return False  # a degenerate face (a line): nothing to stand on
    size = float(np.ptp(flat, axis=0).max())
    # Qhull's equations: n . x + d <= 0 inside, n a unit outward normal.
    return bool((hull.equations[:, :2] @ target + hull.equations[:, 2] < -0.01 * size).all())


def resting_poses(points: Float[Tensor, "N 3"], config: RestingConfig = RestingConfig(), padding: float = 0.0) -> PoseTable:
    """The pose table of an object occupying ``points`` (object frame, y up). ``padding``
    lowers the support plane by that much below the outermost points (half a grid cell when
    the points are cell centres, so the surface rather than the centres touches it)."""
    cloud = points.detach().double().cpu().numpy()
    if cloud.ndim != 2 or cloud.shape[1] != 3 or len(cloud) < 4:
        raise RestingError(f"resting_poses: points must be N x 3 with N >= 4, got shape {tuple(points.shape)}")
    com = cloud.mean(0)
    canonical_height = float(-cloud[:, 1].min()) + padding
    step = max(1, len(cloud) // config.shadow_points)
    shadow = torch.from_numpy(cloud[::step][: config.shadow_points]).float()
    try:
        hull = ConvexHull(cloud)
    except QhullError:  # flat or degenerate: only the canonical pose
        hull = None
    faces: list[tuple[np.ndarray, float, np.ndarray, float]] = []  # normal, offset, vertices, solid angle
    if hull is not None:
        angles = _solid_angles(cloud[hull.simplices], com)
        cos_tol = math.cos(math.radians(config.coplanar_deg))
        unused = np.ones(len(hull.simplices), dtype=bool)
        for first in np.argsort(-angles):  # largest triangles seed the faces
            if not unused[first]:
                continue
            group = unused & (hull.equations[:, :3] @ hull.equations[first, :3] > cos_tol)
            unused &= ~group
            normal = (angles[group, None] * hull.equations[group, :3]).sum(0)
            normal /= np.linalg.norm(normal)
            vertices = cloud[np.unique(hull.simplices[group])]
            offset = float(-(vertices @ normal).max())  # the supporting plane n . x + offset = 0
            faces.append((normal, offset, vertices, float(angles[group].sum())))
    total = sum(face[3] for face in faces) or 1.0
    stable = []
    for normal, offset, vertices, angle in faces:
        com_height = -(normal @ com + offset)
        if _inside(vertices, com + com_height * normal, normal):
            stable.append((normal, offset, com_height, angle / total))
    stable_total = sum(face[3] for face in stable) or 1.0
    cos_canonical = math.cos(math.radians(config.coplanar_deg))
    canonical_geometric = sum(f[3] for f in stable if f[0][1] < -cos_canonical) / stable_total
    others = [f for f in stable if f[0][1] >= -cos_canonical and f[3] / stable_total >= config.min_probability]
    others = sorted(others, key=lambda f: -f[3])[: config.max_poses]
    rotations = torch.tensor(np.array([rotation_to_down(f[0]) for f in others]).reshape(-1, 3, 3), dtype=torch.float32)
    return PoseTable(
        rotations=rotations,
        heights=torch.tensor([-f[1] + padding for f in others], dtype=torch.float32),
        com_heights=torch.tensor([f[2] + padding for f in others], dtype=torch.float32),
        geometric=torch.tensor([f[3] / stable_total for f in others], dtype=torch.float32),
        canonical_height=canonical_height,
        canonical_geometric=canonical_geometric,
        canonical_share=config.canonical_pose_share if others else 1.0,
        points=shadow,
    )


_TABLES: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, PoseTable]]" = weakref.WeakKeyDictionary()
"""Pose tables computed so far, per field (dropped with the field)."""

GRID = 32
"""Cells per axis of the grid on which an object's occupied volume is found."""


@torch.no_grad()
def occupied_points(object_field: nn.Module, grid: int = GRID) -> Float[Tensor, "P 3"]:
    """Object-frame centres of the cells of a ``grid``^3 grid over the field's ``aabb`` that are
    opaque (crossing one cell hides what is behind it: 1 - exp(-density * cell) > 0.5) and that
    the ray marcher samples (``occupied``); the aabb's corners if none is. For a splat object,
    the centres of its Gaussians that are at least half opaque."""
    if isinstance(object_field, SplatObject):
        return opaque_centres(object_field.gaussians)
    aabb = object_field.aabb.detach().float()
    axis = (torch.arange(grid, dtype=torch.float32, device=aabb.device) + 0.5) / grid
    cells = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    positions = aabb[0] + cells * (aabb[1] - aabb[0])
    cell = float((aabb[1] - aabb[0]).min()) / grid
    opaque = []
    for chunk in positions.split(8192):
        directions = torch.zeros_like(chunk)
        directions[:, 2] = -1
        density, _ = object_field(chunk, directions, None)
        opaque.append((1 - torch.exp(-density * cell) > 0.5) & object_field.occupied(chunk))
    points = positions[torch.cat(opaque)].cpu()
    aabb = aabb.cpu()
    if points.numel() == 0:
        corners = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=torch.float32)
        return aabb[0] + corners * (aabb[1] - aabb[0])
    return points


def field_pose_table(object_field: nn.Module, config: RestingConfig = RestingConfig(), grid: int = GRID) -> PoseTable:
    """The pose table of a radiance field's object from its opaque cells (half a cell of
    padding: the surface, not the cell centres, touches the plane), or of a splat object from
    its opaque Gaussians (padded by their median size). Cached on the object."""
    tables = _TABLES.setdefault(object_field, {})
    if (config, grid) in tables:
        return tables[config, grid]
    if isinstance(object_field, SplatObject):  # the surface lies about one Gaussian's size out
        padding = float(object_field.gaussians.detach().log_scales.exp().amax(-1).median())
    else:
        aabb = object_field.aabb.detach().float().cpu()
        padding = float((aabb[1] - aabb[0]).min()) / grid / 2
    table = resting_poses(occupied_points(object_field, grid), config, padding=padding)
    tables[config, grid] = table
    return table
