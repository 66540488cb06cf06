"""Tiny scenes for loop tests: analytic box fields (no assets), and target sets rendered from
them with a known, shifted scene-parameter distribution."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from detector.datasets import LabelledSet, load_dataset
from optimizer.dataset import render_dataset
from optimizer.psi import Psi, PsiConfig
from renderer.scene_renderer import SceneRenderer, SceneRendererConfig

FACE_COLOURS = torch.tensor(
    [
        [0.9, 0.1, 0.1],  # +x
        [0.1, 0.8, 0.1],  # -x
        [0.9, 0.9, 0.9],  # +y (top)
        [0.3, 0.3, 0.3],  # -y
        [0.1, 0.2, 0.9],  # +z (front: azimuth 0)
        [0.9, 0.8, 0.1],  # -z
    ]
)


class FacedBoxField(nn.Module):
    """A box whose six faces have six colours, so that every azimuth bin shows a different
    mix of colours (no two bins look alike, unlike a one-colour box seen from mirrored sides).
    Soft walls (as tests.renderer.fields.SolidBoxField) so positions carry gradients."""

    def __init__(self, half: tuple[float, float, float], density: float = 2000.0, softness: float = 0.004) -> None:
        super().__init__()
        half_t = torch.tensor(half, dtype=torch.float32)
        self.register_buffer("aabb", torch.stack([-half_t * 1.2, half_t * 1.2]))
        self.register_buffer("half_extent", half_t)
        self.register_buffer("face_colours", FACE_COLOURS.clone())
        self.peak = density
        self.softness = softness

    def occupied(self, positions: Tensor) -> Tensor:
        return torch.ones(positions.shape[0], dtype=torch.bool, device=positions.device)

    def forward(
        self, positions: Tensor, directions: Tensor | None = None, appearance: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        inside = torch.sigmoid((self.half_extent - positions.abs()) / self.softness).prod(dim=-1)
        # The face a point is nearest to: the axis where it is closest to the wall, and its side.
        relative = positions / self.half_extent
        axis = relative.abs().argmax(dim=-1)
        side = (relative.gather(-1, axis[:, None])[:, 0] < 0).long()
        return self.peak * inside, self.face_colours[2 * axis + side]


def faced_box_renderer(samples_per_ray: int = 24) -> SceneRenderer:
    """One class: a 10 x 6 x 4 cm faced box."""
    return SceneRenderer(SceneRendererConfig(samples_per_ray=samples_per_ray), [FacedBoxField((0.05, 0.03, 0.02))])


def target_set(
    renderer: SceneRenderer, psi: Psi, count: int, size: int, out_dir: Path, class_names: list[str], seed: int
) -> LabelledSet:
    """``count`` labelled images drawn from ``psi`` (plain renders), written as a dataset and read back."""
    render_dataset(renderer, psi, count, size, out_dir, class_names, seed=seed, progress=False, photometric=None)
    return load_dataset(out_dir / "annotations.json")


SHIFTED_AZIMUTH = [0, 0, 1, 1, 0, 0, 0, 0]
"""Target azimuth histogram: bins 2 and 3 (90-180 degrees) only."""


def shifted_psi(config: PsiConfig) -> Psi:
    return Psi.from_target(config, azimuth_bin_probs=SHIFTED_AZIMUTH)
