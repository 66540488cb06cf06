"""``exposure``: normal, ``mu + s*eps`` stops (colours are multiplied by 2**exposure)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from optimizer.psi_config import PsiConfig
from optimizer.psi_noise import PsiNoise
from optimizer.psi_parts.base import per_class, positive
from optimizer.psi_parts.gaussian import GaussianPart

if TYPE_CHECKING:
    from optimizer.psi import Psi


class Exposure(GaussianPart):
    name = "exposure"
    tensors = ("exposure_loc", "exposure_log_scale")
    """[C] each: mean and log standard deviation, stops."""
    noise_field, value_field = "exposure_noise", "exposure"
    target_arguments = ("exposure_mean", "exposure_std")

    def initial(self, config: PsiConfig) -> dict[str, Tensor]:
        c = config.num_classes
        return {"exposure_loc": torch.full((c,), config.exposure_mean),
                "exposure_log_scale": torch.full((c,), math.log(config.exposure_std))}

    def squash(self, psi: Psi, value: Tensor) -> Tensor:
        return value

    def log_prob(self, psi: Psi, noise: PsiNoise) -> Tensor:
        return self.density(psi, noise)

    def snapshot(self, psi: Psi) -> dict:
        return {"mean": psi.exposure_loc.tolist(), "std": psi.exposure_log_scale.exp().tolist()}

    def from_target(self, psi: Psi, exposure_mean: Any = None, exposure_std: Any = None) -> dict[str, Tensor]:
        classes, values = psi.config.num_classes, {}
        if exposure_mean is not None:
            values["exposure_loc"] = per_class("exposure_mean", exposure_mean, classes)
        if exposure_std is not None:
            values["exposure_log_scale"] = positive("exposure_std", per_class("exposure_std", exposure_std, classes)).log()
        return values


PART = Exposure()
