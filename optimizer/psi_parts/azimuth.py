"""``azimuth``: K equal bins over [0, 2pi) per class.

A bin is drawn by Gumbel-max (so it is drawn with exactly the bin probabilities), then a
uniform offset inside it, as in Neural-Sim. The value is the hard one (exactly inside the
chosen bin); its gradient is the straight-through Gumbel-softmax one: ``d azimuth / d logits =
d/d logits sum_k softmax((logits + g)/tau)_k * (k + u) * width``, so it is biased and depends
on the temperature ``tau``. Not shared within pose groups (see :meth:`Psi.sample`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from optimizer.errors import OptimizerError
from optimizer.psi_config import PsiConfig
from optimizer.psi_noise import PsiNoise
from optimizer.psi_parts.base import Draws, PsiPart, target_logits

if TYPE_CHECKING:
    from optimizer.psi import Psi


class Azimuth(PsiPart):
    name = "azimuth"
    tensors = ("azimuth_logits",)
    """[C, K]: each class's bin logits."""
    target_arguments = ("azimuth_bin_probs",)

    def initial(self, config: PsiConfig) -> dict[str, Tensor]:
        return {"azimuth_logits": torch.zeros(config.num_classes, config.azimuth_bins)}

    def probs(self, psi: Psi) -> Tensor:
        return psi.azimuth_logits.softmax(-1)

    def sample(self, psi: Psi, draws: Draws, drawn: dict[str, Tensor]) -> dict[str, Tensor]:
        gumbel = draws.gumbel(draws.n, draws.m, psi.config.azimuth_bins)
        return {"azimuth_gumbel": gumbel,
                "azimuth_bin": (psi.azimuth_logits.detach()[drawn["class_ids"]] + gumbel).argmax(-1),
                "azimuth_offset": draws.uniform(draws.n, draws.m)}

    def replay(self, psi: Psi, noise: PsiNoise, with_grad: bool) -> dict[str, Tensor | None]:
        bins = psi.config.azimuth_bins
        width = 2 * math.pi / bins
        start = noise.azimuth_bin * width
        # Clamp below the bin's upper edge: start + u * width can round up onto it in float32.
        hard = torch.minimum(start + noise.azimuth_offset * width, torch.nextafter(start + width, start))
        if not (with_grad and psi.azimuth_logits.requires_grad):
            return {"azimuth": hard}
        soft = ((psi.azimuth_logits[noise.class_ids] + noise.azimuth_gumbel) / noise.temperature).softmax(-1)
        relaxed = (soft * (torch.arange(bins, device=psi.device) + noise.azimuth_offset[..., None]) * width).sum(-1)
        # Straight-through: the value is exactly the hard one (x - x == 0 in floating point),
        # the gradient that of the relaxed Gumbel-softmax mixture.
        return {"azimuth": hard + (relaxed - relaxed.detach())}

    def log_prob(self, psi: Psi, noise: PsiNoise) -> Tensor:
        """The bin's probability times the uniform density inside it."""
        log_p = psi.azimuth_logits.log_softmax(-1)[noise.class_ids].gather(-1, noise.azimuth_bin[..., None])[..., 0]
        return log_p - math.log(2 * math.pi / psi.config.azimuth_bins)

    def entropy(self, psi: Psi) -> Tensor:
        """Entropy (nats) of each class's bin distribution, at most log K."""
        return torch.special.entr(self.probs(psi)).sum(-1)

    def snapshot(self, psi: Psi) -> dict:
        bins = psi.config.azimuth_bins
        return {"bin_edges_deg": [360 * k / bins for k in range(bins + 1)],
                "probs": self.probs(psi).tolist(), "entropy": self.entropy(psi).tolist()}

    def from_target(self, psi: Psi, azimuth_bin_probs: Any = None) -> dict[str, Tensor]:
        classes = psi.config.num_classes
        azimuth = target_logits("azimuth_bin_probs", azimuth_bin_probs, psi.config.azimuth_bins)
        if azimuth.dim() == 2 and azimuth.shape[0] != classes:
            raise OptimizerError(f"Psi.from_target: azimuth_bin_probs has {azimuth.shape[0]} rows for {classes} classes")
        return {"azimuth_logits": azimuth.expand(classes, -1)}


PART = Azimuth()
