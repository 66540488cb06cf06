"""``distance``: log-normal, ``exp(mu + s*eps)`` metres from the camera to the object's centre."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from optimizer.psi_config import PsiConfig
from optimizer.psi_noise import PsiNoise
from optimizer.psi_parts.base import Z90, per_class, positive
from optimizer.psi_parts.gaussian import GaussianPart

if TYPE_CHECKING:
    from optimizer.psi import Psi


class Distance(GaussianPart):
    name = "distance"
    tensors = ("distance_loc", "distance_log_scale")
    """[C] each: mean and log standard deviation of log distance."""
    noise_field, value_field = "distance_noise", "log_distance"
    target_arguments = ("distance_median", "distance_log_std")

    def initial(self, config: PsiConfig) -> dict[str, Tensor]:
        return {"distance_loc": torch.tensor(config.per_class("distance_median")).log(),
                "distance_log_scale": torch.tensor(config.per_class("distance_log_std")).log()}

    def squash(self, psi: Psi, value: Tensor) -> Tensor:
        return value.exp()

    def log_prob(self, psi: Psi, noise: PsiNoise) -> Tensor:
        return self.density(psi, noise) - noise.log_distance

    def snapshot(self, psi: Psi) -> dict:
        loc, scale = psi.distance_loc, psi.distance_log_scale.exp()
        return {"median": loc.exp().tolist(), "q10": (loc - Z90 * scale).exp().tolist(), "q90": (loc + Z90 * scale).exp().tolist()}

    def from_target(self, psi: Psi, distance_median: Any = None, distance_log_std: Any = None) -> dict[str, Tensor]:
        classes, values = psi.config.num_classes, {}
        if distance_median is not None:
            values["distance_loc"] = positive("distance_median", per_class("distance_median", distance_median, classes)).log()
        if distance_log_std is not None:
            values["distance_log_scale"] = positive("distance_log_std", per_class("distance_log_std", distance_log_std, classes)).log()
        return values


PART = Distance()
