"""What every component of psi provides, and the random source of one draw.

A :class:`Component` draws some of a batch's noise and turns its noise back into scene fields;
a :class:`PsiPart` is a component with a distribution of its own: tensors (learnable or fixed),
a log density, a snapshot and target values. The parts hold no state: their tensors live on
:class:`optimizer.psi.Psi` under the names the part declares (so ``psi.azimuth_logits`` and the
state_dict keys are the part's tensor names), and every method takes the psi it works on.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from optimizer.errors import OptimizerError
from optimizer.psi_config import PsiConfig
from optimizer.psi_noise import PsiNoise

if TYPE_CHECKING:
    from optimizer.psi import Psi


Z90 = 1.2815515655446004
"""Standard-normal 90% quantile: snapshots report the 10% and 90% quantiles."""


def gumbel(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    uniform = torch.rand(shape, generator=generator, device=generator.device)
    return -torch.log(-torch.log(uniform.clamp_min(torch.finfo(uniform.dtype).tiny)))


def normal_log_density(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    return -log_scale - 0.5 * ((x - loc) / log_scale.exp()) ** 2 - 0.5 * math.log(2 * math.pi)


class Draws:
    """The random source of one :meth:`Psi.sample` call. ``generator`` is the only source of
    randomness: each draw is made on its device and moved to psi's, in the order the
    components ask (that order is what a seed reproduces)."""

    def __init__(self, n: int, max_objects: int, generator: torch.Generator, device: torch.device, pose_group: int) -> None:
        self.n, self.m = n, max_objects
        self.generator, self.device = generator, device
        # Row i takes the shared draws of its group's first image (the identity for groups of 1).
        self.leader = torch.div(torch.arange(n, device=device), pose_group, rounding_mode="floor") * pose_group

    def uniform(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=self.generator.device).to(self.device)

    def normal(self, *shape: int) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=self.generator.device).to(self.device)

    def gumbel(self, *shape: int) -> Tensor:
        return gumbel(shape, self.generator).to(self.device)

    def categorical(self, logits: Tensor, *shape: int) -> Tensor:
        """A choice per element of ``shape`` by Gumbel-max over ``logits``' last dimension."""
        return (logits.detach() + self.gumbel(*shape, logits.shape[-1])).argmax(-1)

    def shared(self, draw: Tensor) -> Tensor:
        """``draw`` with every row replaced by its pose group's first (see :meth:`Psi.sample`)."""
        return draw[self.leader]


class Component:
    """Something :meth:`Psi.sample` draws and :meth:`Psi.replay` turns into scene fields."""

    name: ClassVar[str]

    def sample(self, psi: Psi, draws: Draws, drawn: dict[str, Tensor]) -> dict[str, Tensor]:
        """Its :class:`PsiNoise` fields for ``draws.n`` images; ``drawn`` holds the fields of
        the components drawn before it (e.g. ``class_ids``, ``count``)."""
        raise NotImplementedError

    def replay(self, psi: Psi, noise: PsiNoise, with_grad: bool) -> dict[str, Tensor | None]:
        """Its :class:`SceneParams` fields, recomputed from ``noise`` (continuous values carry
        gradients to its learnable tensors when ``with_grad``)."""
        raise NotImplementedError


class PsiPart(Component):
    """A part of psi with a distribution of its own (listed in optimizer.part_names.REGISTRY)."""

    tensors: ClassVar[tuple[str, ...]]
    """Its tensors' names: attributes of Psi and state_dict keys; parameters when the part is
    learnable (``PsiConfig.learn_<name>``), else buffers."""
    target_arguments: ClassVar[tuple[str, ...]] = ()
    """The keyword arguments of :meth:`Psi.from_target` it takes."""
    per_image: ClassVar[bool] = False
    """Its :meth:`log_prob` is one value per image (else one per object slot)."""

    def initial(self, config: PsiConfig) -> dict[str, Tensor]:
        """The initial value of each of its tensors."""
        raise NotImplementedError

    def masks(self, config: PsiConfig) -> dict[str, Tensor]:
        """Fixed tensors derived from the config (non-persistent buffers of Psi)."""
        return {}

    def missing(self, psi: Psi, name: str) -> Tensor | None:
        """The value of tensor ``name`` for a checkpoint written before the part had it, or
        None (loading such a checkpoint then fails)."""
        return None

    def check_noise(self, psi: Psi, noise: PsiNoise, what: str) -> None:
        """Raise OptimizerError if ``noise`` holds choices this psi cannot have made."""

    def log_prob(self, psi: Psi, noise: PsiNoise) -> Tensor:
        """Log probability (or density) of its recorded values under ``psi``, per slot or per
        image (:attr:`per_image`); differentiable w.r.t. its learnable tensors."""
        raise NotImplementedError

    def snapshot(self, psi: Psi) -> Any:
        """Its JSON-friendly summary (degrees, metres, stops; lists per class)."""
        raise NotImplementedError

    def from_target(self, psi: Psi, **targets: Any) -> dict[str, Tensor]:
        """Values of its tensors for a known distribution (``targets``: some of its
        :attr:`target_arguments`)."""
        raise NotImplementedError

    def tensor(self, psi: Psi, name: str, with_grad: bool = True) -> Tensor:
        """psi's tensor ``name``, detached unless ``with_grad``."""
        value = getattr(psi, name)
        return value if with_grad else value.detach()


# ---------------------------------------------------------------- from_target's checks


def per_class(name: str, value: Any, classes: int, trailing: tuple[int, ...] = ()) -> Tensor:
    """``value`` as a [classes, *trailing] tensor: one value for all classes or one per class."""
    t = torch.as_tensor(value, dtype=torch.float32)
    if tuple(t.shape) == (classes, *trailing):
        return t.clone()
    if t.dim() <= len(trailing) and tuple(t.shape) == trailing[len(trailing) - t.dim():]:
        return t.expand(classes, *trailing).clone()
    raise OptimizerError(
        f"Psi.from_target: {name} must have shape {tuple(trailing)} (all classes) or {(classes, *trailing)} (per class), "
        f"got {tuple(t.shape)}"
    )


def target_logits(name: str, probs: Any, size: int) -> Tensor:
    """Log of ``probs`` (``size`` non-negative numbers per row, not all 0) normalised."""
    p = torch.as_tensor(probs, dtype=torch.float32)
    if p.shape[-1] != size or (p < 0).any() or not (p.sum(-1) > 0).all():
        raise OptimizerError(f"Psi.from_target: {name} needs {size} non-negative probabilities (not all 0), got {p.tolist()}")
    return (p / p.sum(-1, keepdim=True)).log()


def positive(name: str, value: Tensor) -> Tensor:
    if not (value > 0).all():
        raise OptimizerError(f"Psi.from_target: {name} must be > 0, got {value.tolist()}")
    return value
