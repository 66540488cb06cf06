"""``class_mix``: categorical over classes, drawn independently for each object slot (slot j
of an image renders object ``class_ids[j]`` of the scene). No pathwise gradient."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from optimizer.psi_config import PsiConfig
from optimizer.psi_noise import PsiNoise
from optimizer.psi_parts.base import Draws, PsiPart, target_logits

if TYPE_CHECKING:
    from optimizer.psi import Psi


class ClassMix(PsiPart):
    name = "class_mix"
    tensors = ("class_logits",)
    """[C]: the class logits."""
    target_arguments = ("class_probs",)

    def initial(self, config: PsiConfig) -> dict[str, Tensor]:
        return {"class_logits": torch.zeros(config.num_classes)}

    def probs(self, psi: Psi) -> Tensor:
        return psi.class_logits.softmax(-1)

    def sample(self, psi: Psi, draws: Draws, drawn: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"class_ids": draws.shared(draws.categorical(psi.class_logits, draws.n, draws.m))}

    def replay(self, psi: Psi, noise: PsiNoise, with_grad: bool) -> dict[str, Tensor | None]:
        return {"object_ids": noise.class_ids}

    def log_prob(self, psi: Psi, noise: PsiNoise) -> Tensor:
        return psi.class_logits.log_softmax(-1)[noise.class_ids]

    def snapshot(self, psi: Psi) -> list[float]:
        return self.probs(psi).tolist()

    def from_target(self, psi: Psi, class_probs: Any = None) -> dict[str, Tensor]:
        return {"class_logits": target_logits("class_probs", class_probs, psi.config.num_classes)}


PART = ClassMix()
