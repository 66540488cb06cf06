"""psi: the distribution of scene parameters that the outer loop learns.

One distribution per class (class ``c`` renders object ``c`` of the scene's object list) for
the view and the lighting (exposure, colour gain, appearance, pose), and one distribution per
image for the class mix, the number of objects and the background. Each part is an object of
optimizer.psi_parts (a module per part says how it is drawn, replayed, scored, summarised
and set to a target); :class:`Psi` composes them and holds their tensors, each learnable
(``nn.Parameter``) or fixed (a buffer), per :class:`PsiConfig`.

The parts: ``azimuth`` (K bins per class, a straight-through Gumbel-softmax gradient),
``elevation`` (logit-normal on a range), ``distance`` (log-normal), ``exposure`` (normal),
``color_gain`` (log-normal per channel), ``appearance`` and ``pose`` (per-class choice
tables), ``background``, ``class_mix`` and ``count`` (categoricals). Roll is 0; image-plane
offsets, background crops and plain colours are uniform and fixed. ``class_mix``, ``count``,
``background``, ``appearance`` and ``pose`` have no pathwise gradient (the renderer gets
integers); they learn only through :meth:`Psi.log_prob` (score function).

The torch-free names, config and error (optimizer.part_names, optimizer.psi_config,
optimizer.errors) and the recorded draws (optimizer.psi_noise) are re-exported here.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from optimizer.errors import OptimizerError
from optimizer.part_names import (
    DISCRETE_PARTS,
    GEOMETRIC_PARTS,
    PARTS,
    PER_CLASS_PARTS,
    REPARAMETERISED_PARTS,
    SNAPSHOT_KEYS,
)
from optimizer.psi_config import PsiConfig
from optimizer.psi_noise import PsiNoise, PsiSample
from optimizer.psi_parts import COMPONENTS, PSI_PARTS, appearance, azimuth, background, class_mix, count, pose
from optimizer.psi_parts.base import Draws
from renderer.scene_types import SceneParams

__all__ = ["DISCRETE_PARTS", "GEOMETRIC_PARTS", "PARTS", "PER_CLASS_PARTS", "REPARAMETERISED_PARTS", "OptimizerError",
           "Psi", "PsiConfig", "PsiNoise", "PsiSample"]

TARGET_ARGUMENTS: dict[str, str] = {argument: name for name, part in PSI_PARTS.items() for argument in part.target_arguments}
"""Each keyword argument of :meth:`Psi.from_target`, and the part that takes it."""


def _fill_what_old_checkpoints_lack(psi: Psi, state_dict: dict[str, Tensor], prefix: str, *hook_args: Any) -> None:
    """Load-state-dict pre-hook: a checkpoint written before psi had a part lacks its tensors;
    the part gives what its runs used (the average appearance, the canonical pose), so a
    resumed run keeps doing that."""
    for part in PSI_PARTS.values():
        for name in part.tensors:
            if prefix + name not in state_dict and (value := part.missing(psi, name)) is not None:
                state_dict[prefix + name] = value


class Psi(nn.Module):
    """The scene-parameter distribution (see the module docstring and optimizer.psi_parts).

    Each part's tensors are attributes named as the part declares (``psi.azimuth_logits``,
    ``psi.distance_loc``, ...): ``nn.Parameter`` s when learnable, else buffers, so
    ``psi.parameters()`` is exactly what the outer optimiser updates and ``state_dict()`` holds
    everything, including the temperature schedule's step.
    """

    def __init__(self, config: PsiConfig) -> None:
        super().__init__()
        self.config = config
        for name, part in PSI_PARTS.items():
            learn = getattr(config, f"learn_{name}")
            for tensor_name, value in part.initial(config).items():
                if learn:
                    self.register_parameter(tensor_name, nn.Parameter(value))
                else:
                    self.register_buffer(tensor_name, value)
        self.register_buffer("temperature_step", torch.zeros((), dtype=torch.long))
        for part in PSI_PARTS.values():
            for name, mask in part.masks(config).items():
                self.register_buffer(name, mask, persistent=False)  # fixed by the config, so not saved
        self.register_load_state_dict_pre_hook(_fill_what_old_checkpoints_lack)

    # ---------------------------------------------------------------- construction

    @classmethod
    def uniform(cls, config: PsiConfig) -> Psi:
        """Uniform azimuth bins, classes, counts, backgrounds and appearances, the config's
        initial view and lighting, every part fixed (the 'fixed uniform psi' baseline)."""
        return cls(config.frozen())

    @classmethod
    def from_target(cls, config: PsiConfig, **targets: Any) -> Psi:
        """A fixed psi equal to a known distribution (the oracle baseline, or a target domain
        to render). The arguments (:data:`TARGET_ARGUMENTS`, each documented by its part):
        ``azimuth_bin_probs`` (K probabilities, or C rows of K), ``elevation_median_deg``,
        ``elevation_logit_std``, ``distance_median``, ``distance_log_std``, ``exposure_mean``,
        ``exposure_std`` (one value for all classes or one per class), ``color_gain_median``,
        ``color_gain_log_std`` (one value, 3 channels, or C rows of 3), ``appearance_probs``
        (one row for all classes or C rows, row c with 1 + appearance_embeddings[c]
        probabilities, the average first), ``pose_probs`` (C rows), ``background_probs``,
        ``class_probs``, ``count_probs``. Probabilities are normalised and may be 0 (that
        choice is never drawn). Parts left out (or None) keep the config's initial values."""
        unknown = set(targets) - set(TARGET_ARGUMENTS)
        if unknown:  # a TypeError, as for any unknown keyword argument
            raise TypeError(f"Psi.from_target: unknown arguments {sorted(unknown)}; the arguments are {list(TARGET_ARGUMENTS)}")
        psi = cls.uniform(config)
        values: dict[str, Tensor] = {}
        for part in PSI_PARTS.values():
            given = {argument: targets[argument] for argument in part.target_arguments if targets.get(argument) is not None}
            if given:
                values.update(part.from_target(psi, **given))
        with torch.no_grad():
            for name, value in values.items():
                getattr(psi, name).copy_(value)
        return psi

    # ---------------------------------------------------------------- schedule and getters

    @property
    def device(self) -> torch.device:
        return self.temperature_step.device

    @property
    def temperature(self) -> float:
        """Current Gumbel-softmax temperature: max(min, start * decay**step)."""
        cfg = self.config
        return max(cfg.temperature_min, cfg.temperature * cfg.temperature_decay ** int(self.temperature_step))

    def step_temperature(self) -> None:
        """Advance the temperature schedule by one step (call once per outer iteration)."""
        self.temperature_step += 1

    @property
    def learnable_parts(self) -> tuple[str, ...]:
        return tuple(part for part in PARTS if getattr(self.config, f"learn_{part}"))

    def part_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The parameters of each learnable part (e.g. for per-part optimiser groups)."""
        return {part: [getattr(self, name) for name in PSI_PARTS[part].tensors] for part in self.learnable_parts}

    def azimuth_probs(self) -> Float[Tensor, "C K"]:
        return azimuth.PART.probs(self)

    def class_probs(self) -> Float[Tensor, "C"]:
        return class_mix.PART.probs(self)

    def count_probs(self) -> Float[Tensor, "M"]:
        """Probability of 1..M objects per image."""
        return count.PART.probs(self)

    def appearance_log_probs(self) -> Float[Tensor, "C A"]:
        """Log probability of each class's appearance choices: the average, then each
        embedding; -inf past the class's embeddings."""
        return appearance.PART.log_probs(self)

    def appearance_probs(self) -> Float[Tensor, "C A"]:
        """Probability of each class's average appearance, then of each embedding (0 past the
        class's embeddings)."""
        return self.appearance_log_probs().exp()

    def pose_log_probs(self) -> Float[Tensor, "C P"]:
        """Log probability of each class's canonical pose, then of its poses 0..n-1; -inf past them."""
        return pose.PART.log_probs(self)

    def background_probs(self) -> Float[Tensor, "NB"]:
        """Probability of each background image, then of the plain colour (if enabled)."""
        return background.PART.probs(self)

    def entropy(self) -> Float[Tensor, "C"]:
        """Entropy (nats) of each class's azimuth bin distribution: add ``-weight * entropy``
        to the outer loss to resist collapse onto one bin. At most log K."""
        return azimuth.PART.entropy(self)

    def snapshot(self) -> dict:
        """JSON-friendly summary in degrees, metres and stops (lists are per class): an entry
        per part (optimizer.part_names.SNAPSHOT_KEYS)."""
        with torch.no_grad():
            parts = {SNAPSHOT_KEYS[name]: part.snapshot(self) for name, part in PSI_PARTS.items()}
            return {"temperature": self.temperature, "learnable": list(self.learnable_parts), **parts}

    # ---------------------------------------------------------------- sampling

    def _check_parts(self, parts: Collection[str] | None, what: str) -> frozenset[str]:
        if parts is None:
            return frozenset(PARTS)
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise OptimizerError(f"Psi.{what}: unknown parts {sorted(unknown)}; the parts are {list(PARTS)}")
        return frozenset(parts)

    def _check_noise(self, noise: PsiNoise, what: str) -> None:
        cfg = self.config
        shape = tuple(noise.azimuth_gumbel.shape[1:])
        top_class = int(noise.class_ids.max()) if noise.class_ids.numel() else 0
        if shape != (cfg.max_objects, cfg.azimuth_bins) or top_class >= cfg.num_classes:
            raise OptimizerError(
                f"Psi.{what}: noise drawn for another config (slots x bins {shape}, class ids up to "
                f"{top_class}); this psi has max_objects={cfg.max_objects}, "
                f"azimuth_bins={cfg.azimuth_bins}, num_classes={cfg.num_classes}"
            )
        for part in PSI_PARTS.values():
            part.check_noise(self, noise, what)

    def sample(self, n: int, generator: torch.Generator | int, pose_group: int = 1) -> PsiSample:
        """Draw ``n`` images. ``generator`` (or a seed) is the only source of randomness; the
        noise is drawn on its device and moved to psi's, part by part in a fixed order
        (optimizer.psi_parts.DRAW_ORDER).

        ``pose_group`` > 1 draws the images in consecutive groups of that many which share
        everything but the azimuth (bin and in-bin offset): same count, classes, elevation,
        distance, lighting (appearance included), placement and background. Each image is
        still an exact draw from psi (only the joint distribution changes), and comparing an
        image with the others of its group isolates the effect of its azimuth (see
        :func:`optimizer.estimators.leave_one_out_baseline`)."""
        if n < 1:
            raise OptimizerError(f"Psi.sample: n must be >= 1, got {n}")
        if pose_group < 1:
            raise OptimizerError(f"Psi.sample: pose_group must be >= 1, got {pose_group}")
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        draws = Draws(n, self.config.max_objects, generator, self.device, pose_group)
        drawn: dict[str, Tensor] = {}
        for component in COMPONENTS:
            drawn.update(component.sample(self, draws, drawn))
        noise = PsiNoise(**drawn, temperature=self.temperature)
        return PsiSample(scene=self.replay(noise), noise=noise)

    def replay(self, noise: PsiNoise, pathwise_parts: Collection[str] | None = None) -> SceneParams:
        """The scene that ``noise`` was drawn as, recomputed with gradients.

        Under the psi that drew it the values are bit-identical to the sample's. The discrete
        choices (bins, classes, counts, backgrounds, appearances, poses) are kept as recorded; the
        continuous values are recomputed from the recorded noise, so after psi changes they
        move with it (the reparameterisation). Only parts in ``pathwise_parts`` (default: all)
        carry gradients; fixed parts never do.
        """
        with_grad = self._check_parts(pathwise_parts, "replay")
        self._check_noise(noise, "replay")
        scene: dict[str, Tensor | None] = {}
        for component in COMPONENTS:
            scene.update(component.replay(self, noise, component.name in with_grad))
        return SceneParams(**scene)

    def log_prob(self, noise: PsiNoise, parts: Collection[str] | None = None) -> Float[Tensor, "B"]:
        """Log density of each recorded image under the current psi, summed over ``parts``
        (default: all) and over the present objects; differentiable w.r.t. the learnable
        parameters (the score function). Discrete parts give log probabilities; continuous
        ones log densities of the recorded values (radians, metres, stops), including the
        in-bin uniform and the squashing Jacobians, which do not depend on psi."""
        chosen = self._check_parts(parts, "log_prob")
        self._check_noise(noise, "log_prob")
        per_slot = torch.zeros(noise.class_ids.shape, device=self.device)
        per_image = []
        for name in PARTS:
            if name in chosen:
                part = PSI_PARTS[name]
                if part.per_image:
                    per_image.append(part.log_prob(self, noise))
                else:
                    per_slot = per_slot + part.log_prob(self, noise)
        total = torch.where(noise.present, per_slot, 0.0).sum(-1)
        for term in per_image:
            total = total + term
        return total
