"""``elevation``: logit-normal on the configured range, ``lo + (hi - lo) * sigmoid(mu + s*eps)``.

Chosen over bins because it is reparameterised without bias and has a closed-form density.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import functional as F

from optimizer.errors import OptimizerError
from optimizer.psi_config import PsiConfig
from optimizer.psi_noise import PsiNoise
from optimizer.psi_parts.base import Z90, per_class, positive
from optimizer.psi_parts.gaussian import GaussianPart

if TYPE_CHECKING:
    from optimizer.psi import Psi


class Elevation(GaussianPart):
    name = "elevation"
    tensors = ("elevation_loc", "elevation_log_scale")
    """[C] each: the logit-space centre and log spread."""
    noise_field, value_field = "elevation_noise", "elevation_logit"
    target_arguments = ("elevation_median_deg", "elevation_logit_std")

    def initial(self, config: PsiConfig) -> dict[str, Tensor]:
        lo, hi = config.elevation_range_deg
        median_fraction = (torch.tensor(config.per_class("elevation_median_deg")) - lo) / (hi - lo)
        return {"elevation_loc": torch.logit(median_fraction),
                "elevation_log_scale": torch.tensor(config.per_class("elevation_logit_std")).log()}

    def squash(self, psi: Psi, value: Tensor) -> Tensor:
        lo, hi = (math.radians(a) for a in psi.config.elevation_range_deg)
        return lo + (hi - lo) * torch.sigmoid(value)

    def log_prob(self, psi: Psi, noise: PsiNoise) -> Tensor:
        z = noise.elevation_logit
        lo, hi = (math.radians(a) for a in psi.config.elevation_range_deg)
        jacobian = math.log(hi - lo) + F.logsigmoid(z) + F.logsigmoid(-z)
        return self.density(psi, noise) - jacobian

    def snapshot(self, psi: Psi) -> dict:
        lo, hi = psi.config.elevation_range_deg

        def degrees(z: Tensor) -> list[float]:
            return (lo + (hi - lo) * torch.sigmoid(z)).tolist()

        loc, scale = psi.elevation_loc, psi.elevation_log_scale.exp()
        return {"median": degrees(loc), "q10": degrees(loc - Z90 * scale), "q90": degrees(loc + Z90 * scale)}

    def from_target(self, psi: Psi, elevation_median_deg: Any = None, elevation_logit_std: Any = None) -> dict[str, Tensor]:
        config, values = psi.config, {}
        lo, hi = config.elevation_range_deg
        if elevation_median_deg is not None:
            median = per_class("elevation_median_deg", elevation_median_deg, config.num_classes)
            if not ((median > lo) & (median < hi)).all():
                raise OptimizerError(f"Psi.from_target: elevation_median_deg must lie inside {config.elevation_range_deg}")
            values["elevation_loc"] = torch.logit((median - lo) / (hi - lo))
        if elevation_logit_std is not None:
            std = per_class("elevation_logit_std", elevation_logit_std, config.num_classes)
            values["elevation_log_scale"] = positive("elevation_logit_std", std).log()
        return values


PART = Elevation()
