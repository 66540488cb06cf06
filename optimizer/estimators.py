"""Estimators of the training-data term of the outer gradient,

    dL_val/dpsi = - d/dpsi [ u . dL_train(theta, psi)/dtheta ],   L_train = E_{s ~ p_psi} l(theta, x(s)),

given ``u`` (see :mod:`optimizer.hypergradient`):

- ``pathwise`` (Neural-Sim's): differentiate through the sampled values and the renderer,
  ``-d/dpsi mean_i [u . dl/dtheta(x(s_i(psi)))]``. Only reparameterised parts learn (azimuth
  through the biased straight-through Gumbel-softmax); class mix, count and background do not.
- ``score``: the score-function identity ``-E[(u . dl_i/dtheta) d/dpsi log p_psi(s_i)]`` with
  the per-sample gradient alignment ``a_i = u . dl_i/dtheta`` as the reward (``-a_i`` is the
  sample's contribution to the loss gradient), normalised within the batch, and a baseline
  subtracted. Every part learns; no renderer gradient is needed.
- ``lookahead`` (the azimuth bins only): render the iteration's scenes at every bin, fine-tune
  a copy of the detector on each bin's images and score it on the validation set; the bins'
  gradient is then exact given those scores (:func:`enumerated_bin_gradient`). It measures the
  outer objective itself over a few inner steps instead of its first-order, per-image proxy.
- ``both``: pathwise for the photometric parts (exposure, colour gain), score function for
  the rest: the discrete choices (azimuth bin, appearance, background, class mix, count) and the
  geometric parts (elevation, distance), whose pathwise derivative misses that the object's box
  moves with them (see ``optimizer.psi.GEOMETRIC_PARTS``). The two sets are disjoint, so each
  part gets exactly one estimate.

All flat functions over tensors and callbacks; nothing here knows the detector or renderer
(the per-sample dots, the HVP and the mixed gradient come from ``detector.losses``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from optimizer.config import AlignmentNormalisation, Estimator
from optimizer.hypergradient import MixedGrad, dot, pathwise_backward
from optimizer.psi import DISCRETE_PARTS, GEOMETRIC_PARTS, PARTS, REPARAMETERISED_PARTS, OptimizerError


def estimator_parts(estimator: Estimator) -> tuple[frozenset[str], frozenset[str]]:
    """(parts that get the pathwise gradient, parts that get the score-function gradient):
    pass the first to :meth:`Psi.replay` and the second to :meth:`Psi.log_prob`. ``lookahead``
    needs neither (its bins' gradient is :func:`enumerated_bin_gradient`)."""
    if estimator == "lookahead":
        return frozenset(), frozenset()
    if estimator == "pathwise":
        return REPARAMETERISED_PARTS, frozenset()
    if estimator == "score":
        return frozenset(), frozenset(PARTS)
    if estimator == "both":
        pathwise = REPARAMETERISED_PARTS - DISCRETE_PARTS - GEOMETRIC_PARTS
        return pathwise, frozenset(PARTS) - pathwise
    raise OptimizerError(f"estimator_parts: unknown estimator {estimator!r}; use 'pathwise', 'score', 'both' or 'lookahead'")


def enumerated_bin_gradient(
    logits: Float[Tensor, "C K"], rewards: Float[Tensor, "K"] | Float[Tensor, "C K"]
) -> Float[Tensor, "C K"]:
    """The gradient of the loss ``-E_{k ~ softmax(logits)} [r_k]`` w.r.t. the bin logits when
    every bin's reward is measured (the ``lookahead`` estimator, and ``score`` / ``both`` with
    ``enumerate_bins``): ``-p_j (r_j - sum_k p_k r_k)`` per row, with one reward per bin for
    every row or one row of rewards per row of logits. Exact given the rewards: no sampling over
    the bins, so no score-function variance from which bins were drawn; the rewards' own noise
    remains. A constant added to a row of rewards changes nothing. Detached."""
    if rewards.dim() not in (1, 2) or rewards.shape[-1] != logits.shape[-1] or (
            rewards.dim() == 2 and rewards.shape != logits.shape):
        raise OptimizerError(f"enumerated_bin_gradient: one reward per bin (K,) or per row and bin (C, K), got "
                             f"rewards {tuple(rewards.shape)} for logits {tuple(logits.shape)}")
    probs = logits.detach().softmax(-1)
    rewards = rewards.detach().to(probs)
    return -probs * (rewards - (probs * rewards).sum(-1, keepdim=True))


def per_sample_gradient_norms(losses: Float[Tensor, "N"], params: Sequence[Tensor]) -> Float[Tensor, "N"]:
    """``|dl_i/dparams|`` for each sample (one backward pass per sample, graph retained), the
    denominator of the ``cosine`` normalisation. Detached."""
    if losses.dim() != 1:
        raise OptimizerError(f"per_sample_gradient_norms: losses must be one per sample (N,), got shape {tuple(losses.shape)}")
    params = list(params)
    norms = []
    for loss in losses:
        grads = [g for g in torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) if g is not None]
        norms.append(dot(grads, grads).sqrt() if grads else torch.zeros((), device=losses.device, dtype=losses.dtype))
    return torch.stack(norms).detach()


def normalise_alignment(
    dots: Float[Tensor, "N"],
    normalise: AlignmentNormalisation,
    *,
    gradient_norms: Float[Tensor, "N"] | None = None,
    direction_norm: float | Tensor | None = None,
) -> Float[Tensor, "N"]:
    """Rewards from the per-sample gradient alignment ``dots[i] = u . dl_i/dtheta`` (higher:
    training on sample i lowers the validation loss more; e.g. from
    ``detector.losses.per_image_gradient_dot``, with BatchNorm on batch statistics, the only
    mode in which the issue's measurement found it informative). Detached.

    - ``none``: the raw dots — the unbiased score-function reward (losses whose mean is the
      training loss of the Hessian);
    - ``standardise``: ``(dots - mean) / std`` within the batch (drops the scale and the part
      common to all samples; slightly biased, far less variance);
    - ``cosine``: ``dots / (|u| |dl_i/dtheta|)``, which removes the dependence on each sample's
      loss and gradient size; needs ``gradient_norms`` (:func:`per_sample_gradient_norms`) and
      ``direction_norm`` (``|u|``).
    """
    dots = dots.detach()
    if dots.dim() != 1:
        raise OptimizerError(f"normalise_alignment: dots must be one per sample (N,), got shape {tuple(dots.shape)}")
    tiny = torch.finfo(dots.dtype).tiny
    if normalise == "none":
        return dots
    if normalise == "standardise":
        if dots.numel() < 2:
            raise OptimizerError("normalise_alignment: 'standardise' needs at least 2 samples")
        return (dots - dots.mean()) / dots.std(unbiased=False).clamp_min(tiny)
    if normalise == "cosine":
        if gradient_norms is None or direction_norm is None:
            raise OptimizerError("normalise_alignment: 'cosine' needs gradient_norms and direction_norm")
        return dots / (gradient_norms.detach() * direction_norm).clamp_min(tiny)
    raise OptimizerError(f"normalise_alignment: unknown normalise {normalise!r}; use 'none', 'standardise' or 'cosine'")


def alignment_rewards(
    alignment: Float[Tensor, "N"],
    direction: Sequence[Tensor],
    normalise: AlignmentNormalisation,
    gradient_norms: Float[Tensor, "N"] | None = None,
) -> Float[Tensor, "N"]:
    """:func:`normalise_alignment` of ``alignment[i] = u . dl_i/dtheta`` with ``u = direction``
    (whose norm the ``cosine`` normalisation divides by). Detached."""
    direction_norm = dot(direction, direction).sqrt() if normalise == "cosine" else None
    return normalise_alignment(alignment, normalise, gradient_norms=gradient_norms, direction_norm=direction_norm)


def score_function_surrogate(
    log_prob: Float[Tensor, "N"], rewards: Float[Tensor, "N"], baseline: float | Tensor = 0.0
) -> Tensor:
    """A scalar whose gradient w.r.t. psi is the score-function estimate
    ``-mean_i (r_i - b) d/dpsi log p_psi(s_i)`` of the loss gradient (descend on it: samples
    with reward above the baseline become more likely). Unbiased for any baseline that does
    not depend on the current samples. Also the REINFORCE step of a whole-run reward (N = 1)."""
    if log_prob.shape != rewards.shape:
        raise OptimizerError(f"score_function_surrogate: log_prob {tuple(log_prob.shape)} and rewards {tuple(rewards.shape)} differ")
    return -((rewards - baseline).detach() * log_prob).mean()


def leave_one_out_baseline(rewards: Float[Tensor, "N"], group_size: int) -> Float[Tensor, "N"]:
    """For each sample, the mean reward of the other members of its group (consecutive groups
    of ``group_size``; the last may be shorter). With groups drawn by
    ``Psi.sample(pose_group=group_size)`` the others share the sample's class, view distance,
    lighting and background, and their azimuths are drawn independently of its own, so this
    baseline is unbiased for the azimuth's score-function gradient while it cancels what the
    group has in common. It cancels the gradient of the shared parts too: use it for the
    azimuth only. A sample alone in its group gets the group's (its own) reward: no signal."""
    rewards = rewards.detach()
    if rewards.dim() != 1:
        raise OptimizerError(f"leave_one_out_baseline: rewards must be one per sample (N,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise OptimizerError(f"leave_one_out_baseline: group_size must be >= 2, got {group_size}")
    group = torch.div(torch.arange(rewards.numel(), device=rewards.device), group_size, rounding_mode="floor")
    sums = torch.zeros(int(group.max()) + 1, device=rewards.device, dtype=rewards.dtype).index_add_(0, group, rewards)
    sizes = torch.bincount(group).to(rewards.dtype)
    others = (sizes[group] - 1).clamp_min(1)
    return torch.where(sizes[group] > 1, (sums[group] - rewards) / others, rewards)


@dataclass
class MovingAverageBaseline:
    """Exponential moving average of past batches' mean reward, the score-function baseline.
    Plain fields, so ``dataclasses.asdict`` / ``MovingAverageBaseline(**state)`` checkpoint it."""

    decay: float = 0.9
    """Weight of the old average at each update."""
    value: float | None = None
    """Current average; None before the first batch."""

    def update(self, rewards: Float[Tensor, "N"]) -> float:
        """The baseline for this batch (the average of earlier batches; the batch's own mean for
        the very first, a one-off bias of order 1/N), then fold this batch into the average."""
        if not 0 <= self.decay < 1:
            raise OptimizerError(f"MovingAverageBaseline.decay must be in [0, 1), got {self.decay}")
        mean = float(rewards.detach().mean())
        baseline = mean if self.value is None else self.value
        self.value = mean if self.value is None else self.decay * self.value + (1 - self.decay) * mean
        return baseline


def outer_gradient(
    estimator: Estimator,
    direction: Sequence[Tensor],
    *,
    outputs: Tensor | Sequence[Tensor] | None = None,
    mixed_grad: MixedGrad | None = None,
    log_prob: Float[Tensor, "N"] | None = None,
    alignment: Float[Tensor, "N"] | None = None,
    gradient_norms: Float[Tensor, "N"] | None = None,
    normalise: AlignmentNormalisation = "standardise",
    baseline: MovingAverageBaseline | None = None,
    grouped_log_prob: Float[Tensor, "N"] | None = None,
    group_size: int = 1,
) -> Float[Tensor, "N"] | None:
    """Accumulate the chosen estimate of ``-d/dpsi [u . dL_train/dtheta]`` into psi's ``.grad``
    (``direction`` is ``u``). Returns the rewards used (None for ``pathwise``).

    pathwise part (``pathwise``, ``both``): ``outputs`` = images rendered from
    ``psi.replay(noise, estimator_parts(estimator)[0])`` and ``mixed_grad`` for them.
    score part (``score``, ``both``): ``log_prob = psi.log_prob(noise, estimator_parts(estimator)[1])``
    and ``alignment[i] = u . dl_i/dtheta`` for the same images, turned into rewards by
    :func:`normalise_alignment` (``cosine`` also needs ``gradient_norms``), minus the optional
    moving-average ``baseline`` (updated here). ``grouped_log_prob`` (the azimuth's, for
    images drawn in pose groups of ``group_size``) takes the group's
    :func:`leave_one_out_baseline` instead; ``log_prob`` then covers the other score parts.
    """
    pathwise_parts, score_parts = estimator_parts(estimator)
    rewards = None
    if pathwise_parts:
        if outputs is None or mixed_grad is None:
            raise OptimizerError(f"outer_gradient: estimator {estimator!r} needs outputs and mixed_grad")
        pathwise_backward(outputs, mixed_grad, direction)
    if score_parts:
        if (log_prob is None and grouped_log_prob is None) or alignment is None:
            raise OptimizerError(f"outer_gradient: estimator {estimator!r} needs log_prob and alignment")
        rewards = alignment_rewards(alignment, direction, normalise, gradient_norms)
        b = baseline.update(rewards) if baseline is not None else 0.0
        if log_prob is not None:
            score_function_surrogate(log_prob, rewards, b).backward()
        if grouped_log_prob is not None:
            score_function_surrogate(grouped_log_prob, rewards, leave_one_out_baseline(rewards, group_size)).backward()
    return rewards
