"""``background``: categorical over the background images, plus the plain-colour option last.

The crop of the chosen image (its side, then its centre) and the plain colour are drawn
uniformly on the configured ranges, fixed. No pathwise gradient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from optimizer.psi_config import PsiConfig
from optimizer.psi_noise import PsiNoise
from optimizer.psi_parts.base import Draws, PsiPart, target_logits

if TYPE_CHECKING:
    from optimizer.psi import Psi


class Background(PsiPart):
    name = "background"
    tensors = ("background_logits",)
    """[NB]: logits of each background image, then of the plain colour (if enabled)."""
    target_arguments = ("background_probs",)
    per_image = True

    def initial(self, config: PsiConfig) -> dict[str, Tensor]:
        return {"background_logits": torch.zeros(config.num_background_choices)}

    def probs(self, psi: Psi) -> Tensor:
        """Probability of each background image, then of the plain colour (if enabled)."""
        return psi.background_logits.softmax(-1)

    def sample(self, psi: Psi, draws: Draws, drawn: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg, n, shared = psi.config, draws.n, draws.shared
        choice = shared(draws.categorical(psi.background_logits, n))
        side_lo, side_hi = cfg.background_crop_side
        side = shared(side_lo + (side_hi - side_lo) * draws.uniform(n))
        centre = shared(side[:, None] / 2 + (1 - side[:, None]) * draws.uniform(n, 2))
        color_lo, color_hi = cfg.background_color_range
        return {"background_ids": torch.where(choice == cfg.num_backgrounds, -1, choice),
                "background_crop": torch.cat([centre, side[:, None]], dim=-1),
                "background_color": shared(color_lo + (color_hi - color_lo) * draws.uniform(n, 3))}

    def replay(self, psi: Psi, noise: PsiNoise, with_grad: bool) -> dict[str, Tensor | None]:
        return {"background_ids": noise.background_ids, "background_crop": noise.background_crop,
                "background_color": noise.background_color}

    def log_prob(self, psi: Psi, noise: PsiNoise) -> Tensor:
        choice = torch.where(noise.background_ids < 0, psi.config.num_backgrounds, noise.background_ids)
        return psi.background_logits.log_softmax(-1)[choice]

    def snapshot(self, psi: Psi) -> list[float]:
        return self.probs(psi).tolist()

    def from_target(self, psi: Psi, background_probs: Any = None) -> dict[str, Tensor]:
        return {"background_logits": target_logits("background_probs", background_probs, psi.config.num_background_choices)}


PART = Background()
