"""``pose``: per class, categorical over its object's resting poses on the support plane
(renderer.resting): the canonical pose (id -1, the first choice), then its stable poses (ids
0..n-1), starting at the pose table's probabilities (``PsiConfig.pose_probs``). Without pose
tables there is no support plane and the scenes have no pose ids. See optimizer.psi_parts.table."""

from __future__ import annotations

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


class Pose(ChoiceTable):
    name = "pose"
    tensors = ("pose_logits",)
    """[C, P]: P = the most pose choices (canonical included) any class has."""
    mask = "pose_available"
    ids_field = "pose_ids"
    target_arguments = ("pose_probs",)

    def used(self, config: PsiConfig) -> bool:
        return bool(config.pose_probs)

    def initial(self, config: PsiConfig) -> dict[str, Tensor]:
        """Log of each class's normalised pose_probs; 0 past its poses (masked), so the logits
        Adam updates stay finite; a probability of 0 stays impossible."""
        logits = torch.zeros(config.num_classes, config.pose_choices)
        for class_id, row in enumerate(config.pose_probs):
            probs = torch.tensor(row, dtype=torch.float32)
            logits[class_id, : len(row)] = (probs / probs.sum()).log().clamp_min(-1e4)
        return {"pose_logits": logits}

    def masks(self, config: PsiConfig) -> dict[str, Tensor]:
        available = torch.zeros(config.num_classes, config.pose_choices, dtype=torch.bool)
        available[:, 0] = True
        for class_id, row in enumerate(config.pose_probs):
            available[class_id, : len(row)] = True
        return {"pose_available": available}

    def check_noise(self, psi: Psi, noise: PsiNoise, what: str) -> None:
        if self.drawn_elsewhere(psi, noise):
            poses = [int(n) - 1 for n in psi.pose_available.sum(-1)]
            raise OptimizerError(f"Psi.{what}: noise drawn for another config (pose ids up to "
                                 f"{int(noise.pose_ids.max())} for classes with {poses} resting poses)")

    def from_target(self, psi: Psi, pose_probs: Any = None) -> dict[str, Tensor]:
        """One row per class, row c with the class's pose choices, the canonical first."""
        c = psi.config.num_classes
        if len(pose_probs) != c:
            raise OptimizerError(f"Psi.from_target: pose_probs has {len(pose_probs)} rows for {c} classes")
        table = torch.zeros(c, psi.config.pose_choices)
        for class_id, (row, available) in enumerate(zip(pose_probs, psi.pose_available)):
            table[class_id, : int(available.sum())] = target_logits(f"pose_probs[{class_id}]", row, int(available.sum()))
        return {"pose_logits": table}


PART = Pose()
