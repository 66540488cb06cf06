"""What the methods that step psi along an estimated gradient share (neural-sim, REINFORCE):
psi's Adam optimiser, the score function's moving-average reward baseline and the step itself."""

from __future__ import annotations

from dataclasses import asdict

import torch

from optimizer.checkpoint import LoopState
from optimizer.divergence import check_finite
from optimizer.estimators import MovingAverageBaseline
from optimizer.psi import PER_CLASS_PARTS
from optimizer.strategies.base import Strategy


def psi_step_scale(iteration: int, warmup_iterations: int) -> float:
    """Fraction of psi_learning_rate used at outer ``iteration`` (0-based): a linear warm-up over
    the first ``warmup_iterations``, then 1."""
    return min(1.0, (iteration + 1) / (warmup_iterations + 1))


class GradientStrategy(Strategy):
    """A method that accumulates an outer gradient into psi's ``.grad`` and calls :meth:`step_psi`."""

    def start(self) -> None:
        self.psi_optimizer = self.new_psi_optimizer()
        self.baseline = MovingAverageBaseline(decay=self.config.outer.baseline_decay)

    def state_dict(self) -> dict:
        return {"psi_optimizer": self.psi_optimizer.state_dict() if self.psi_optimizer is not None else {},
                "baseline": asdict(self.baseline)}

    def load_state_dict(self, state: LoopState) -> None:
        self.psi_optimizer = self.new_psi_optimizer()
        if self.psi_optimizer is not None:
            self.psi_optimizer.load_state_dict(state.psi_optimizer)
        self.baseline = MovingAverageBaseline(**state.baseline)

    def new_psi_optimizer(self) -> torch.optim.Adam | None:
        parameters = list(self.loop.psi.parameters())
        return torch.optim.Adam(parameters, lr=self.config.psi.learning_rate) if parameters else None

    def step_psi(self, iteration: int) -> float:
        """Normalise psi's gradient, add the entropy bonus, take the Adam step (its size warmed
        up over the first psi_warmup_iterations) and the temperature step; returns the norm of
        the outer gradient before normalising."""
        config, psi = self.config, self.loop.psi
        grads = [p.grad for p in psi.parameters() if p.grad is not None]
        norm = float(torch.cat([g.reshape(-1) for g in grads]).norm()) if grads else 0.0
        check_finite(norm, "the hypergradient", iteration, "lower psi_learning_rate or raise damping")
        if config.outer.normalise_hypergradient and norm > 0:
            for g in grads:
                g.div_(norm)
        if "azimuth" in config.psi.learnable and config.psi.entropy_weight > 0:
            (-config.psi.entropy_weight * psi.entropy().sum()).backward()
        if config.psi.share_classes:
            for part, tensors in psi.part_parameters().items():
                if part in PER_CLASS_PARTS:
                    for tensor in tensors:
                        tensor.grad.copy_(tensor.grad.mean(0, keepdim=True).expand_as(tensor))
        for group in self.psi_optimizer.param_groups:
            group["lr"] = config.psi.learning_rate * psi_step_scale(iteration, config.psi.warmup_iterations)
        self.psi_optimizer.step()
        self.psi_optimizer.zero_grad(set_to_none=True)
        psi.step_temperature()
        for name, value in psi.named_parameters():
            check_finite(value.detach(), f"psi's {name}", iteration, "lower psi_learning_rate")
        return norm
