"""The image-plane placement: each object's centre offset (uniform, fixed) and its roll (0).

Not a part of psi (nothing to learn, no density): a component that draws between the colour
gain and the background. Slot j of an image with c objects sits at x = spacing * (j - (c - 1)
/ 2) around ``offset_centre``, then jitters uniformly within ``offset_range``; with several
objects the x jitter stays within spacing / 4, so neighbours keep their order and their
centres stay spacing / 2 apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from optimizer.psi_noise import PsiNoise
from optimizer.psi_parts.base import Component, Draws

if TYPE_CHECKING:
    from optimizer.psi import Psi


class Offsets(Component):
    name = "offsets"

    def sample(self, psi: Psi, draws: Draws, drawn: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg, n, m, count = psi.config, draws.n, draws.m, drawn["count"]
        slots = torch.arange(m, device=draws.device, dtype=torch.float32)
        centre_x = torch.where(slots < count[:, None], cfg.object_spacing * (slots - (count[:, None] - 1) / 2), 0.0)
        jitter_x = torch.where(count == 1, cfg.offset_range[0], min(cfg.offset_range[0], cfg.object_spacing / 4))
        offset = torch.stack(
            [
                cfg.offset_centre[0] + centre_x + jitter_x[:, None] * (2 * draws.uniform(n, m) - 1),
                cfg.offset_centre[1] + cfg.offset_range[1] * (2 * draws.uniform(n, m) - 1),
            ],
            dim=-1,
        )
        return {"offset": draws.shared(offset)}

    def replay(self, psi: Psi, noise: PsiNoise, with_grad: bool) -> dict[str, Tensor | None]:
        return {"offset": noise.offset, "roll": torch.zeros_like(noise.offset[..., 0])}


OFFSETS = Offsets()
