"""nerfsim's own object NeRF: a lean radiance field bounded to one object, fast on CPU.

Built from nerfstudio's field components: multi-scale triplanes (pure torch, differentiable with
respect to the sample positions, which the scene renderer needs for pose gradients) or, where
asked, nerfstudio's hash grid (tiny-cuda-nn when importable, its torch fallback otherwise),
followed by one small MLP. Colour is view-independent: the assets are diffuse textured objects,
and lighting is applied per object at render time (exposure, colour gain).

Empty space is skipped with a boolean occupancy grid over the object's box. It starts as the
visual hull of the training masks and is refreshed from the learned density while training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.field_components.encodings import Encoding, HashEncoding
from nerfstudio.field_components.mlp import MLP
from torch import Tensor, nn

from renderer.accelerators import TCNN_HASH_GRID, Backend, use_cuda_path


@dataclass
class ObjectFieldConfig:
    """Configuration of :class:`ObjectField`."""

    encoding: Literal["triplane", "hash"] = "triplane"
    """Spatial encoding: pure-torch multi-scale triplanes (CPU default) or nerfstudio's hash grid
    (tiny-cuda-nn when importable)."""
    plane_resolutions: tuple[int, ...] = (32, 64, 128)
    """Triplanes: one per resolution; features of all scales are concatenated."""
    plane_components: int = 16
    """Triplanes: feature channels per plane."""
    hash_levels: int = 12
    """Hash grid: number of levels (finest resolution 512)."""
    hash_backend: Backend = "auto"
    """Hash grid: 'auto' runs it on tiny-cuda-nn where that can run (CUDA and tinycudann
    importable) and on nerfstudio's pure-torch grid otherwise, saying so once; 'cuda' insists on
    tiny-cuda-nn (a clear error elsewhere); 'torch' always uses the pure-torch grid. The two
    store their weights differently, so an asset loads only where its training's grid runs."""
    hidden_dim: int = 64
    """Width of the single hidden layer of the MLP."""
    occupancy_resolution: int = 64
    """Cells per axis of the empty-space grid."""
    density_bias: float = -1.0
    """Initial pre-activation offset of the density: starts the field nearly transparent."""


class TriplaneProductEncoding(Encoding):
    """Features at a point: the element-wise product of three feature planes (xy, xz, yz)
    sampled bilinearly, like nerfstudio's ``TriplaneEncoding`` with ``reduce="product"`` but
    differentiable with respect to the coordinates (the scene renderer's pose gradients flow
    through them; nerfstudio's version detaches them) and with all three planes sampled in one
    ``grid_sample`` call."""

    def __init__(self, resolution: int, num_components: int) -> None:
        super().__init__(in_dim=3)
        self.num_components = num_components
        self.plane_coef = nn.Parameter(torch.empty(3, num_components, resolution, resolution).uniform_(0.1, 0.5))

    def get_out_dim(self) -> int:
        return self.num_components

    def forward(self, in_tensor: Float[Tensor, "N 3"]) -> Float[Tensor, "N C"]:
        """``in_tensor`` in [-1, 1] per axis."""
        planes = torch.stack([in_tensor[:, [0, 1]], in_tensor[:, [0, 2]], in_tensor[:, [1, 2]]])[:, None]
        features = torch.nn.functional.grid_sample(self.plane_coef, planes, align_corners=True, padding_mode="border")
        return features.prod(dim=0)[:, 0].T


class ObjectField(nn.Module):
    """Density and colour of one object, queried at points of the object frame (metres)."""

    aabb: Float[Tensor, "2 3"]
    occupancy: Bool[Tensor, "R R R"]

    def __init__(self, config: ObjectFieldConfig, aabb: Float[Tensor, "2 3"]) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("aabb", aabb.float().clone())
        res = config.occupancy_resolution
        self.register_buffer("occupancy", torch.ones(res, res, res, dtype=torch.bool))
        if config.encoding == "triplane":
            self.encodings = nn.ModuleList(
                TriplaneProductEncoding(r, config.plane_components) for r in config.plane_resolutions
            )
            feature_dim = config.plane_components * len(config.plane_resolutions)
        else:
            self.encodings = nn.ModuleList(
                [HashEncoding(num_levels=config.hash_levels, max_res=512,
                              implementation="tcnn" if use_cuda_path(TCNN_HASH_GRID, config.hash_backend) else "torch")]
            )
            feature_dim = self.encodings[0].get_out_dim()
        self.mlp = MLP(
            in_dim=feature_dim,
            num_layers=2,
            layer_width=config.hidden_dim,
            out_dim=4,
            activation=nn.ReLU(),
            implementation="torch",
        )

    @property
    def appearance_embeddings(self) -> int:
        """Appearance embeddings to choose from: none (colour has no per-image appearance)."""
        return 0

    @property
    def density_unit(self) -> Tensor:
        """Metres per normalised unit: densities are learned per normalised unit of the longest
        half-axis and converted to per metre by dividing by this."""
        return (self.aabb[1] - self.aabb[0]).max() / 2

    def normalise(self, positions: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """Object-frame metres to [-1, 1] per axis of the box."""
        lo, hi = self.aabb[0], self.aabb[1]
        return (positions - lo) / (hi - lo) * 2 - 1

    def forward(
        self,
        positions: Float[Tensor, "N 3"],
        directions: Float[Tensor, "N 3"] | None = None,
        appearance: Tensor | None = None,
    ) -> tuple[Float[Tensor, "N"], Float[Tensor, "N 3"]]:
        """Density (per metre) and RGB in [0, 1] at object-frame points (metres). Colour depends
        on neither the viewing direction nor an appearance embedding (this model has none; the
        arguments are accepted for the field protocol)."""
        x = self.normalise(positions)
        if self.config.encoding == "hash":
            features = self.encodings[0]((x + 1) / 2)
        else:
            features = torch.cat([encoding(x) for encoding in self.encodings], dim=-1)
        out = self.mlp(features)
        density = trunc_exp(out[:, 0] + self.config.density_bias) / self.density_unit
        rgb = torch.sigmoid(out[:, 1:])
        return density, rgb

    def occupied(self, positions: Float[Tensor, "N 3"]) -> Bool[Tensor, "N"]:
        """Whether points fall in occupied cells of the empty-space grid (not differentiable)."""
        return occupancy_lookup(self.occupancy, self.aabb, positions)

    def cell_centres(self) -> Float[Tensor, "R R R 3"]:
        """Object-frame centre of every occupancy cell."""
        return grid_cell_centres(self.aabb, self.occupancy.shape[0])

    @torch.no_grad()
    def refresh_occupancy(self, within: Bool[Tensor, "R R R"], opacity_threshold: float = 0.01) -> int:
        """Mark as occupied the cells of ``within`` whose density makes a cell-sized step at least
        ``opacity_threshold`` opaque somewhere inside (sampled at 8 jittered points), then dilate
        by one cell so surfaces between cell centres are not cut. Returns the occupied count."""
        centres = self.cell_centres()[within]
        cell_size = ((self.aabb[1] - self.aabb[0]) / self.occupancy.shape[0])
        step = cell_size.norm()
        generator = torch.Generator(device=centres.device).manual_seed(0)
        max_density = torch.zeros(centres.shape[0], device=centres.device)
        for _ in range(8):
            jitter = (torch.rand(centres.shape, generator=generator, device=centres.device) - 0.5) * cell_size
            density, _ = self(centres + jitter)
            max_density = torch.maximum(max_density, density)
        grid = torch.zeros_like(self.occupancy)
        grid[within] = (1 - torch.exp(-max_density * step)) > opacity_threshold
        grid = dilate(grid) & within
        self.occupancy.copy_(grid)
        return int(grid.sum())


def grid_cell_centres(aabb: Float[Tensor, "2 3"], resolution: int) -> Float[Tensor, "R R R 3"]:
    """Centres of the cells of a ``resolution``^3 grid over the box ``aabb``."""
    axis = (torch.arange(resolution, dtype=torch.float32, device=aabb.device) + 0.5) / resolution
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    return aabb[0] + grid * (aabb[1] - aabb[0])


def grid_cells(
    aabb: Float[Tensor, "2 3"], resolution: int, positions: Float[Tensor, "N 3"]
) -> tuple[Int[Tensor, "N 3"], Bool[Tensor, "N"]]:
    """Cell index (clamped into the grid) of each point of a ``resolution``^3 grid over
    ``aabb``, and whether the point lies inside the grid at all (not differentiable)."""
    cell = ((positions.detach() - aabb[0]) / (aabb[1] - aabb[0]) * resolution).floor().long()
    inside = ((cell >= 0) & (cell < resolution)).all(dim=-1)
    return cell.clamp(0, resolution - 1), inside


def occupancy_lookup(
    occupancy: Bool[Tensor, "R R R"], aabb: Float[Tensor, "2 3"], positions: Float[Tensor, "N 3"]
) -> Bool[Tensor, "N"]:
    """Whether points fall in occupied cells of a boolean grid over ``aabb``."""
    cell, inside = grid_cells(aabb, occupancy.shape[0], positions)
    return inside & occupancy[cell[:, 0], cell[:, 1], cell[:, 2]]


def dilate(grid: Bool[Tensor, "R R R"], cells: int = 1) -> Bool[Tensor, "R R R"]:
    """Grow a boolean grid by ``cells`` in every direction (3D max-pool)."""
    size = 2 * cells + 1
    pooled = nn.functional.max_pool3d(grid[None, None].float(), size, stride=1, padding=cells)
    return pooled[0, 0] > 0


def shell(grid: Bool[Tensor, "R R R"], cells: int) -> Bool[Tensor, "R R R"]:
    """The outer ``cells`` layers of a boolean grid: the grid minus its erosion. Cells outside
    the grid count as empty, so a solid touching the border keeps its border layers."""
    padded = nn.functional.pad(grid[None, None].float(), (1,) * 6)
    eroded = dilate(padded[0, 0] == 0, cells)[1:-1, 1:-1, 1:-1]
    return grid & eroded


@dataclass
class ObjectAssetMeta:
    """What a saved object asset says about itself (``asset.json``)."""

    name: str
    """Class name of the object."""
    aabb: list[list[float]]
    """Object-frame bounding box, metres: [[min x, y, z], [max x, y, z]]."""
    model: dict = field(default_factory=dict)
    """The :class:`ObjectFieldConfig` as a dict."""
    training: dict = field(default_factory=dict)
    """How it was trained and how well it did (steps, seconds, held-out PSNR)."""
