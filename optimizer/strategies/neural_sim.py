"""Neural-Sim: psi steps along an estimate of dL_val/dpsi through the inner training, taken
before the detector trains on the iteration's images (after fine-tuning on them their
gradients describe how well it fits them, not what they would teach it).

The estimate: the validation loss's gradient ``g`` w.r.t. the warm-started detector's
weights; ``u = (H + damping)^-1 g`` (optimizer.direction); then by config.outer.estimator the
pathwise part (replay the same draws with gradients, render again in chunks and push
``-d/dx [u . dL_train/dtheta]`` through the renderer) and the score-function part (per-image
alignments ``u . dL_i/dtheta`` as rewards). Every gradient uses HYPERGRADIENT_BN: the per-image
alignment is informative only with batch statistics. With ``enumerate_bins`` the azimuth's
score part renders every scene at every bin and takes the exact expectation of the bins' mean
rewards (or, with alignment_objective 'mixture', their running statistics:
optimizer.estimators.MixtureStatistics); the benchmark-only 'lookahead' estimator fine-tunes a
detector copy per bin instead. Either way the loop detector then trains on the every-bin images
resampled by psi. With alignment_objective 'appearance' no detector gradient is taken: every
learnable part descends the MMD between features of psi's images and the validation photos'
(optimizer.appearance_objective).
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from detector.losses import detection_loss, trainable_parameters
from detector.model import build_detector
from detector.targets import ImageBatch
from optimizer.appearance import AppearanceStatistics
from optimizer.appearance_objective import AppearanceTargets, appearance_step
from optimizer.appearance_pathwise import PATHWISE_PARTS
from optimizer.checkpoint import LoopState
from optimizer.direction import inverse_hessian_direction
from optimizer.divergence import check_finite
from optimizer.estimators import (
    MixtureStatistics,
    alignment_rewards,
    enumerated_bin_gradient,
    estimator_parts,
    outer_gradient,
    per_sample_gradient_gram,
    per_sample_gradient_norms,
)
from optimizer.hessian import per_image_dots, per_image_dots_and_image_gradient
from optimizer.hypergradient import mixed_grad_from_gradients, pathwise_backward
from optimizer.psi import OptimizerError, Psi, PsiNoise
from optimizer.strategies.base import Step
from optimizer.strategies.every_bin import (
    at_every_bin,
    mean_by_bin,
    mean_by_class_and_bin,
    resample_by_psi,
    rows_by_psi,
)
from optimizer.strategies.gradient import GradientStrategy
from optimizer.validation import HYPERGRADIENT_BN, validation_loss_and_gradient

if TYPE_CHECKING:
    from optimizer.context import LoopContext


class NeuralSim(GradientStrategy):
    """Its state: psi's optimiser and the reward baseline (GradientStrategy), the mixture
    alignment's running sums and the appearance objective's crops."""

    def __init__(self, loop: LoopContext) -> None:
        super().__init__(loop)
        config = self.config
        learnable = set(config.psi.learnable)
        parts = estimator_parts(config.outer.estimator)
        self.pathwise_parts, self.score_parts = (part & learnable for part in parts)
        self.lookahead = config.outer.estimator == "lookahead"
        # Presets set enumerate_bins whatever the job learns: it enumerates the azimuth's score
        # part, so without that part it is off, and so is the bins' objective (alignment_objective).
        self.enumerate_bins = config.outer.enumerate_bins and "azimuth" in self.score_parts
        # 'appearance' moves its parts without a detector gradient (optimizer.appearance_objective);
        # the other objectives are the enumerated bins'.
        self.by_appearance = config.outer.alignment_objective == "appearance"
        self.appearance_parts = set(config.outer.appearance_parts or ()) & learnable if self.by_appearance else set()
        if config.outer.enumerate_bins and not self.enumerate_bins:
            unused = "enumerate_bins is" if self.by_appearance else \
                f"enumerate_bins and alignment_objective {config.outer.alignment_objective!r} are"
            self.notes = (f"{unused} unused: the azimuth is not learnt by the score function",)
        self.every_bin = self.lookahead or self.enumerate_bins
        if self.every_bin:
            self.pose_group = loop.psi_config.azimuth_bins  # scenes that share all but the azimuth, one per bin
        elif "azimuth" in self.score_parts:
            self.pose_group = config.outer.pose_group
        self.alignment_kept = self.parameters_aligned()
        # Built here so that too few validation objects fail before any work.
        self.appearance_targets = (AppearanceTargets.from_validation(
            loop.val_batch, bins=self.enumerate_bins and "azimuth" in self.appearance_parts)
                                   if self.by_appearance else None)

    def start(self) -> None:
        super().start()
        self.mixture = MixtureStatistics(decay=self.config.outer.baseline_decay)
        self.appearance = self.new_appearance_statistics()

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "mixture": {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in asdict(self.mixture).items()},
            "appearance": asdict(self.appearance) if self.appearance is not None else None,
        }

    def load_state_dict(self, state: LoopState) -> None:
        super().load_state_dict(state)
        self.mixture = (MixtureStatistics(**state.mixture) if state.mixture
                        else MixtureStatistics(decay=self.config.outer.baseline_decay))
        self.appearance = (AppearanceStatistics(**state.appearance) if state.appearance
                           else self.new_appearance_statistics())

    def new_appearance_statistics(self) -> AppearanceStatistics | None:
        return self.appearance_targets.bin_statistics() if self.by_appearance else None

    def draw(self, t: int) -> tuple[Psi, PsiNoise]:
        psi, noise = super().draw(t)
        if self.every_bin:
            at_every_bin(noise, self.pose_group)
        return psi, noise

    def step(self, t: int, batch: ImageBatch, noise: PsiNoise, sampler: Psi, record: dict) -> Step:
        if self.lookahead:
            record.update(self.lookahead_gradient(batch, noise, t))
        else:
            val_loss_before, diagnostics = self.outer_step_direction(batch, noise, t)
            record.update(diagnostics, val_loss_before=val_loss_before)
        record["hypergradient_norm"] = self.step_psi(t)
        if self.every_bin:
            batch = resample_by_psi(self.loop, batch, noise, t)
        return self.train_loop_detector(t, batch)

    def render_again(self, noise: PsiNoise, rows: slice, parts: set[str], iteration: int) -> Tensor:
        """Rows ``rows`` of the iteration's images rendered again from their draws, with
        gradients to psi's ``parts`` (bit for bit the images the detector saw)."""
        loop = self.loop
        draws = loop.psi.replay(noise.index(rows), parts)
        rgb = loop.renderer.render(draws, self.config.detector.image_size).rgb.clamp(0, 1)
        return loop.photograph(rgb, iteration, 0, rows.start)

    def outer_step_direction(self, batch: ImageBatch, noise: PsiNoise, iteration: int) -> tuple[float, dict]:
        """Accumulate the estimated dL_val/dpsi into psi's .grad; returns the validation loss
        and diagnostics."""
        config, loop = self.config, self.loop
        model, psi = loop.detector, loop.psi
        pathwise, score = self.pathwise_parts, self.score_parts
        diagnostics: dict = {}
        if self.by_appearance:
            # Differentiated through the renderer; a geometric part by the score function (its boxes).
            by_look = self.appearance_parts & pathwise & PATHWISE_PARTS
            diagnostics.update(appearance_step(
                psi, batch, noise, self.appearance_parts, self.pose_group, self.appearance_targets, self.appearance,
                pathwise=by_look, render=lambda rows: self.render_again(noise, rows, by_look, iteration),
                chunk=loop.renderer.config.chunk_images))
            pathwise, score = pathwise - self.appearance_parts, score - self.appearance_parts
            if not (pathwise or score):  # nothing else learns: no detector gradient is needed
                return loop.val_loss(model, iteration), diagnostics
        parameters = trainable_parameters(model)
        val_loss, val_grad = validation_loss_and_gradient(model, loop.val_batch, config.detector.val_batch_size, True)
        check_finite(val_loss, "the validation loss", iteration, "the detector diverged")
        targets = batch.targets()
        images = batch.images.detach().requires_grad_(True)
        u, train_grad, image_weights, fell_back = inverse_hessian_direction(config, model, images, targets, val_grad)
        diagnostics["inverse_hessian_fallback"] = fell_back
        check_finite(torch.cat([x.reshape(-1) for x in u]), "the inverse-Hessian-vector product", iteration,
                     "raise damping, or use 'cg' or a smaller neumann_scale")
        alignment = None
        if pathwise:
            # -d/dx [u . dL_train/dtheta], then through the renderer chunk by chunk, so that the
            # renderer's graph never holds more than one chunk. The per-image alignments come
            # from the same double backward when they use the same u.
            if score and self.alignment_kept is None:
                alignment, image_grad = per_image_dots_and_image_gradient(train_grad, image_weights, u, images)
            else:
                image_grad = mixed_grad_from_gradients(train_grad, images)(u)[0]
            step = loop.renderer.config.chunk_images
            for start in range(0, noise.batch_size, step):
                rows = slice(start, start + step)
                rgb = self.render_again(noise, rows, pathwise, iteration)
                pathwise_backward(rgb, lambda _u, g=image_grad[rows]: [g], u)
        if score:
            if self.alignment_kept is not None:
                u = [x if keep else torch.zeros_like(x) for x, keep in zip(u, self.alignment_kept)]
                parameters = [p for p, keep in zip(parameters, self.alignment_kept) if keep]
            if alignment is None:
                alignment = per_image_dots(train_grad, image_weights, u)
            norms = gram = None
            if config.outer.alignment_normalisation == "cosine":
                losses = detection_loss(model, batch.images, targets, HYPERGRADIENT_BN, reduction="none")
                if config.outer.alignment_objective == "mixture":
                    gram = per_sample_gradient_gram(losses, parameters)
                    norms = gram.diagonal().sqrt()
                else:
                    norms = per_sample_gradient_norms(losses, parameters)
            grouped = self.pose_group > 1  # (only when the azimuth is a score part: see __init__)
            shared = score - {"azimuth"} if grouped else score
            sampled_bins = grouped and not self.enumerate_bins
            if shared or sampled_bins:
                rewards = outer_gradient(
                    "score", u, log_prob=psi.log_prob(noise, shared) if shared else None, alignment=alignment,
                    gradient_norms=norms, normalise=config.outer.alignment_normalisation, baseline=self.baseline,
                    grouped_log_prob=psi.log_prob(noise, {"azimuth"}) if sampled_bins else None,
                    group_size=self.pose_group,
                )
            else:
                rewards = alignment_rewards(alignment, u, config.outer.alignment_normalisation, norms)
            if self.enumerate_bins and "azimuth" in score:
                logits = psi.azimuth_logits
                if gram is not None:
                    scenes = torch.div(torch.arange(noise.batch_size), self.pose_group, rounding_mode="floor")
                    cells = noise.class_ids[:, 0] * logits.shape[1] + noise.azimuth_bin[:, 0]
                    self.mixture.update(rewards, gram, cells.to(logits.device), scenes.to(logits.device), logits.numel())
                    gradient, found = self.mixture.gradient(logits)
                    diagnostics.update(found)
                else:
                    gradient = enumerated_bin_gradient(logits, mean_by_class_and_bin(rewards, noise, *logits.shape))
                logits.grad = gradient if logits.grad is None else logits.grad + gradient
            diagnostics["alignment_mean"] = float(alignment.mean())
            diagnostics["reward_by_azimuth_bin"] = mean_by_bin(rewards, noise, psi.config.azimuth_bins)
        return val_loss, diagnostics

    def lookahead_gradient(self, batch: ImageBatch, noise: PsiNoise, iteration: int) -> dict:
        """Estimator 'lookahead': a copy of the detector fine-tuned on each bin's images (the
        same scenes and minibatch order for every bin), mixed with images drawn by psi
        (lookahead_bin_share; the same draws for every bin), scored on the validation set; the
        exact expectation of the scores over the bins gives the logits' gradient."""
        loop = self.loop
        bins = loop.psi.config.azimuth_bins
        chosen = noise.azimuth_bin[:, 0]
        per_bin = noise.batch_size // bins
        share = self.config.outer.lookahead_bin_share
        from_psi = rows_by_psi(loop, noise, iteration, round(per_bin * (1 - share) / share), "lookahead")
        scores = []
        for k in range(bins):
            model = copy.deepcopy(loop.detector)
            rows = torch.cat([(chosen == k).nonzero()[:, 0], from_psi.to(chosen.device)])
            steps = self.config.budget.inner_steps
            loop.train(model, batch.index(rows), steps, copy.deepcopy(loop.finetune_state), iteration)
            scores.append(self.search_score(model, iteration, periodic_map=False)[0])  # only the score is kept
        logits = loop.psi.azimuth_logits
        logits.grad = enumerated_bin_gradient(logits, torch.tensor(scores, device=logits.device))
        return {"score_by_azimuth_bin": scores}

    def parameters_aligned(self) -> list[bool] | None:
        """Per trainable detector parameter: does the per-image alignment use it
        (alignment_ignores; None: all)? Fails, before any work, naming a prefix that matches no
        parameter."""
        ignores = self.config.outer.alignment_ignores
        if not ignores:
            return None
        model = build_detector(self.loop.detector_config)
        names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
        for prefix in ignores:
            if not any(name.startswith(prefix) for name in names):
                raise OptimizerError(
                    f"OptimizeConfig.outer.alignment_ignores: {prefix!r} is the start of no parameter name of the "
                    f"{self.config.detector.arch} detector (they look like {names[0]!r} ... {names[-1]!r})")
        kept = [not any(name.startswith(prefix) for prefix in ignores) for name in names]
        if not any(kept):
            raise OptimizerError("OptimizeConfig.outer.alignment_ignores: leaves no parameter for the per-image alignment")
        return kept
