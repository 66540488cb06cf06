"""What :meth:`optimizer.psi.Psi.sample` records (:class:`PsiNoise`) and returns (:class:`PsiSample`)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from renderer.scene_types import SceneParams


@dataclass
class PsiNoise:
    """Everything drawn by :meth:`Psi.sample`: the noise, the discrete choices and the values
    they gave (detached). :meth:`Psi.replay` turns it back into the same scene; the recorded
    values let :meth:`Psi.log_prob` score the sample under a later psi."""

    count: Int[Tensor, "B"]
    """Objects in each image, 1..M; slots j >= count are empty."""
    class_ids: Int[Tensor, "B M"]
    azimuth_bin: Int[Tensor, "B M"]
    azimuth_gumbel: Float[Tensor, "B M K"]
    azimuth_offset: Float[Tensor, "B M"]
    """Position inside the bin, uniform in [0, 1)."""
    elevation_noise: Float[Tensor, "B M"]
    elevation_logit: Float[Tensor, "B M"]
    """Drawn pre-sigmoid elevation."""
    distance_noise: Float[Tensor, "B M"]
    log_distance: Float[Tensor, "B M"]
    exposure_noise: Float[Tensor, "B M"]
    exposure: Float[Tensor, "B M"]
    color_gain_noise: Float[Tensor, "B M 3"]
    log_color_gain: Float[Tensor, "B M 3"]
    appearance_ids: Int[Tensor, "B M"]
    """Appearance embedding of each slot's object, or -1 for the average."""
    pose_ids: Int[Tensor, "B M"]
    """Resting pose of each slot's object, -1 for the canonical one (always -1 without poses)."""
    offset: Float[Tensor, "B M 2"]
    background_ids: Int[Tensor, "B"]
    """Background image index, or -1 for the plain colour."""
    background_crop: Float[Tensor, "B 3"]
    background_color: Float[Tensor, "B 3"]
    temperature: float = 1.0
    """Gumbel-softmax temperature in force when this was drawn (replay uses it for gradients)."""

    @property
    def batch_size(self) -> int:
        return self.count.shape[0]

    @property
    def present(self) -> Bool[Tensor, "B M"]:
        slots = torch.arange(self.class_ids.shape[1], device=self.count.device)
        return slots < self.count[:, None]

    def _tensor_fields(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "temperature"]

    def index(self, rows: slice | Tensor) -> "PsiNoise":
        """The images ``rows`` (a slice or index tensor) of this batch."""
        return replace(self, **{name: getattr(self, name)[rows] for name in self._tensor_fields()})

    def to(self, device: torch.device | str) -> "PsiNoise":
        return replace(self, **{name: getattr(self, name).to(device) for name in self._tensor_fields()})


@dataclass
class PsiSample:
    """A batch drawn from psi: the scene (float fields differentiable w.r.t. psi) and its noise."""

    scene: SceneParams
    noise: PsiNoise

