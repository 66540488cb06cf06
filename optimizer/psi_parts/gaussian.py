"""The family of per-class normal parts (elevation, distance, exposure, colour gain).

Each draws ``loc + exp(log_scale) * eps`` per object slot (and channel) from its class's
``loc`` and ``log_scale``, then maps it onto its range (a squashing, an exponential or none).
Reparameterised without bias: replay recomputes the value from the recorded ``eps``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

from optimizer.psi_noise import PsiNoise
from optimizer.psi_parts.base import Draws, PsiPart, normal_log_density

if TYPE_CHECKING:
    from optimizer.psi import Psi


class GaussianPart(PsiPart):
    """A per-class normal; its tensors are ``(<name>_loc, <name>_log_scale)``, its scene field ``<name>``."""

    noise_field: ClassVar[str]
    """Its standard-normal noise in PsiNoise."""
    value_field: ClassVar[str]
    """Its drawn value (``loc + scale * noise``, before :meth:`squash`) in PsiNoise."""
    channels: ClassVar[tuple[int, ...]] = ()
    """Trailing shape of one slot's value (colour gain: 3 channels)."""

    def value(self, psi: Psi, class_ids: Tensor, noise: Tensor, with_grad: bool) -> Tensor:
        """``loc + scale * noise`` of each slot's class: shared by sample and replay so both
        compute bit-identical values."""
        loc, log_scale = (self.tensor(psi, name, with_grad)[class_ids] for name in self.tensors)
        return loc + log_scale.exp() * noise

    def squash(self, psi: Psi, value: Tensor) -> Tensor:
        """The scene value (radians, metres, stops, gain) of a drawn value."""
        raise NotImplementedError

    def density(self, psi: Psi, noise: PsiNoise) -> Tensor:
        """Normal log density of the recorded value before :meth:`squash`."""
        loc, log_scale = (getattr(psi, name)[noise.class_ids] for name in self.tensors)
        return normal_log_density(getattr(noise, self.value_field), loc, log_scale)

    def sample(self, psi: Psi, draws: Draws, drawn: dict[str, Tensor]) -> dict[str, Tensor]:
        noise = draws.shared(draws.normal(draws.n, draws.m, *self.channels))
        return {self.noise_field: noise, self.value_field: self.value(psi, drawn["class_ids"], noise, with_grad=False)}

    def replay(self, psi: Psi, noise: PsiNoise, with_grad: bool) -> dict[str, Tensor | None]:
        drawn = self.value(psi, noise.class_ids, getattr(noise, self.noise_field), with_grad)
        return {self.name: self.squash(psi, drawn)}
