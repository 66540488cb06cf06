"""``appearance``: per class, categorical over the average appearance (id -1, the first choice)
and, for an object whose model has per-training-image appearance embeddings (nerfstudio's
nerfacto), each of them (ids 0..n-1; ``PsiConfig.appearance_embeddings``), initially uniform.
Objects without embeddings have only the average. See optimizer.psi_parts.table."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from optimizer.errors import OptimizerError
from optimizer.psi_config import PsiConfig
from optimizer.psi_noise import PsiNoise
from optimizer.psi_parts.base import target_logits
from optimizer.psi_parts.table import ChoiceTable

if TYPE_CHECKING:
    from optimizer.psi import Psi


class Appearance(ChoiceTable):
    name = "appearance"
    tensors = ("appearance_logits",)
    """[C, A]: A = the average plus the most embeddings any class has."""
    mask = "appearance_available"
    ids_field = "appearance_ids"
    target_arguments = ("appearance_probs",)

    def used(self, config: PsiConfig) -> bool:
        return config.appearance_choices > 1

    def initial(self, config: PsiConfig) -> dict[str, Tensor]:
        return {"appearance_logits": torch.zeros(config.num_classes, config.appearance_choices)}

    def masks(self, config: PsiConfig) -> dict[str, Tensor]:
        embeddings = torch.tensor(config.appearance_embeddings or (0,) * config.num_classes)
        return {"appearance_available": torch.arange(config.appearance_choices) <= embeddings[:, None]}

    def check_noise(self, psi: Psi, noise: PsiNoise, what: str) -> None:
        if self.drawn_elsewhere(psi, noise):
            raise OptimizerError(
                f"Psi.{what}: noise drawn for another config (appearance ids up to {int(noise.appearance_ids.max())} for "
                f"objects with appearance_embeddings={psi.config.appearance_embeddings})"
            )

    def from_target(self, psi: Psi, appearance_probs: Any = None) -> dict[str, Tensor]:
        """One row for all classes or one per class, row c with 1 + appearance_embeddings[c]
        probabilities, the average first."""
        c = psi.config.num_classes
        one_row = all(isinstance(p, numbers.Real) for p in appearance_probs)
        rows = [appearance_probs] * c if one_row else list(appearance_probs)
        if len(rows) != c:
            raise OptimizerError(f"Psi.from_target: appearance_probs has {len(rows)} rows for {c} classes")
        table = torch.zeros(c, psi.config.appearance_choices)
        for class_id, (row, available) in enumerate(zip(rows, psi.appearance_available)):
            choices = int(available.sum())
            table[class_id, :choices] = target_logits(f"appearance_probs[{class_id}]", row, choices)
        return {"appearance_logits": table}


PART = Appearance()
