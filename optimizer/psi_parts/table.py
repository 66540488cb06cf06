"""The family of per-class choice tables (appearance, pose): class c chooses among its own
object's options, so its row of the [C, choices] logits is masked past them.

The first choice (id -1: the average appearance, the canonical pose) is every object's; the
ids 0..n-1 are the object's own. Masked when used rather than stored, so the logits Adam
updates stay finite. Drawn after every other part, and only when some object has options
(else nothing is drawn: the generator is left as it was, so a seed gives the scenes it gave
before psi had the part). No pathwise gradient: the renderer gets integers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from optimizer.psi_config import PsiConfig
from optimizer.psi_noise import PsiNoise
from optimizer.psi_parts.base import Draws, PsiPart

if TYPE_CHECKING:
    from optimizer.psi import Psi


class ChoiceTable(PsiPart):
    """Tensors ``(<logits>,)`` [C, choices], with the non-persistent mask ``<mask>`` of the
    choices each class has; noise and scene field ``ids_field``."""

    mask: ClassVar[str]
    """Name of the [C, choices] boolean buffer: which choices each class has."""
    ids_field: ClassVar[str]
    """Its PsiNoise and SceneParams field: each slot's choice id (-1 for the first choice)."""

    def used(self, config: PsiConfig) -> bool:
        """Whether any object has a choice besides the first (else nothing is drawn and the
        scene field is None)."""
        raise NotImplementedError

    def log_probs(self, psi: Psi) -> Tensor:
        """Log probability of each class's choices; -inf past the class's."""
        return getattr(psi, self.tensors[0]).masked_fill(~getattr(psi, self.mask), -math.inf).log_softmax(-1)

    def available(self, psi: Psi) -> Tensor:
        return getattr(psi, self.mask)

    def missing(self, psi: Psi, name: str) -> Tensor:
        """Checkpoints written before psi had the part: their objects all took the first choice."""
        first_only = torch.full_like(getattr(psi, name), -math.inf)
        first_only[:, 0] = 0.0
        return first_only

    def sample(self, psi: Psi, draws: Draws, drawn: dict[str, Tensor]) -> dict[str, Tensor]:
        if not self.used(psi.config):
            return {self.ids_field: torch.full((draws.n, draws.m), -1, dtype=torch.long, device=draws.device)}
        choice = draws.categorical(self.log_probs(psi)[drawn["class_ids"]], draws.n, draws.m)
        return {self.ids_field: draws.shared(choice - 1)}

    def replay(self, psi: Psi, noise: PsiNoise, with_grad: bool) -> dict[str, Tensor | None]:
        # None when unused, so renderers that ignore the field see no change.
        return {self.ids_field: getattr(noise, self.ids_field) if self.used(psi.config) else None}

    def log_prob(self, psi: Psi, noise: PsiNoise) -> Tensor:
        choice = (getattr(noise, self.ids_field) + 1)[..., None]
        return self.log_probs(psi)[noise.class_ids].gather(-1, choice)[..., 0]

    def snapshot(self, psi: Psi) -> list[list[float]]:
        """Per class, the probabilities of its own choices."""
        choices = self.available(psi).sum(-1).tolist()
        return [row[:n].tolist() for row, n in zip(self.log_probs(psi).exp(), choices)]

    def drawn_elsewhere(self, psi: Psi, noise: PsiNoise) -> bool:
        """Whether ``noise`` holds a choice that no class of this psi has."""
        ids = getattr(noise, self.ids_field)
        if not ids.numel():
            return False
        top = getattr(psi, self.tensors[0]).shape[-1]
        return int(ids.max()) >= top - 1 or not bool(self.available(psi)[noise.class_ids, ids + 1].all())
