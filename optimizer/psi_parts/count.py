"""``count``: categorical over 1..max_objects objects per image (slots j >= count are empty).
No pathwise gradient."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from optimizer.psi_config import PsiConfig
from optimizer.psi_noise import PsiNoise
from optimizer.psi_parts.base import Draws, PsiPart, target_logits

if TYPE_CHECKING:
    from optimizer.psi import Psi


class Count(PsiPart):
    name = "count"
    tensors = ("count_logits",)
    """[M]: logits of 1..M objects per image."""
    target_arguments = ("count_probs",)
    per_image = True

    def initial(self, config: PsiConfig) -> dict[str, Tensor]:
        return {"count_logits": torch.zeros(config.max_objects)}

    def probs(self, psi: Psi) -> Tensor:
        """Probability of 1..M objects per image."""
        return psi.count_logits.softmax(-1)

    def sample(self, psi: Psi, draws: Draws, drawn: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"count": draws.shared(draws.categorical(psi.count_logits, draws.n) + 1)}

    def replay(self, psi: Psi, noise: PsiNoise, with_grad: bool) -> dict[str, Tensor | None]:
        return {"present": noise.present}

    def log_prob(self, psi: Psi, noise: PsiNoise) -> Tensor:
        return psi.count_logits.log_softmax(-1)[noise.count - 1]

    def snapshot(self, psi: Psi) -> list[float]:
        return self.probs(psi).tolist()

    def from_target(self, psi: Psi, count_probs: Any = None) -> dict[str, Tensor]:
        return {"count_logits": target_logits("count_probs", count_probs, psi.config.max_objects)}


PART = Count()
