"""``color_gain``: log-normal per channel around 1, ``exp(mu + s*eps)`` (white balance)."""

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


class ColorGain(GaussianPart):
    name = "color_gain"
    tensors = ("color_gain_loc", "color_gain_log_scale")
    """[C, 3] each: mean and log standard deviation of each channel's log gain."""
    noise_field, value_field = "color_gain_noise", "log_color_gain"
    channels = (3,)
    target_arguments = ("color_gain_median", "color_gain_log_std")

    def initial(self, config: PsiConfig) -> dict[str, Tensor]:
        c = config.num_classes
        return {"color_gain_loc": torch.zeros(c, 3),
                "color_gain_log_scale": torch.full((c, 3), math.log(config.color_gain_log_std))}

    def squash(self, psi: Psi, value: Tensor) -> Tensor:
        return value.exp()

    def log_prob(self, psi: Psi, noise: PsiNoise) -> Tensor:
        return (self.density(psi, noise) - noise.log_color_gain).sum(-1)

    def snapshot(self, psi: Psi) -> dict:
        return {"median": psi.color_gain_loc.exp().tolist(), "log_std": psi.color_gain_log_scale.exp().tolist()}

    def from_target(self, psi: Psi, color_gain_median: Any = None, color_gain_log_std: Any = None) -> dict[str, Tensor]:
        classes, values = psi.config.num_classes, {}
        if color_gain_median is not None:
            median = per_class("color_gain_median", color_gain_median, classes, (3,))
            values["color_gain_loc"] = positive("color_gain_median", median).log()
        if color_gain_log_std is not None:
            std = per_class("color_gain_log_std", color_gain_log_std, classes, (3,))
            values["color_gain_log_scale"] = positive("color_gain_log_std", std).log()
        return values


PART = ColorGain()
