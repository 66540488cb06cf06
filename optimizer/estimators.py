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

With every bin measured in every scene, the bins can also ascend the ``mixture`` alignment
(:func:`mixture_alignment_gradient`): the cosine between u and the mean unit gradient of psi's
images as a whole, not the mean of each image's cosine.

All flat functions over tensors and callbacks; nothing here knows the detector or renderer
(the per-sample dots, the HVP and the mixed gradient come from ``detector.losses``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
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


def per_sample_flat_gradients(losses: Float[Tensor, "N"], params: Sequence[Tensor]) -> Float[Tensor, "N P"]:
    """Row i: ``dl_i/dparams`` flattened, zeros for parameters the loss does not use (one
    backward pass per sample, graph retained; N times the parameters' size). Detached."""
    if losses.dim() != 1:
        raise OptimizerError(f"per_sample_flat_gradients: losses must be one per sample (N,), got shape {tuple(losses.shape)}")
    params = list(params)
    flat = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        flat.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).detach()
                               for g, p in zip(grads, params)]))
    return torch.stack(flat)


def per_sample_gradient_gram(losses: Float[Tensor, "N"], params: Sequence[Tensor]) -> Float[Tensor, "N N"]:
    """``G[i, j] = dl_i/dparams . dl_j/dparams`` from :func:`per_sample_flat_gradients`: the
    ``mixture`` alignment's overlaps between images. Its diagonal's square root is
    :func:`per_sample_gradient_norms`. Detached."""
    stacked = per_sample_flat_gradients(losses, params)
    return stacked @ stacked.T


def mixture_cell_sums(
    cosines: Float[Tensor, "N"],
    gram: Float[Tensor, "N N"],
    cells: Int[Tensor, "N"],
    scenes: Int[Tensor, "N"],
    cell_count: int,
) -> tuple[Float[Tensor, "A"], Float[Tensor, "A A"], int, int]:
    """One batch's sums behind the ``mixture`` alignment, for images in scenes that each show
    every cell (class row and azimuth bin of psi; ``enumerate_bins``): per cell the sum over the
    images of their cosine to u, per pair of cells the sum of the images' unit-gradient overlaps
    ``g_i.g_j / (|g_i||g_j|)`` over pairs from *different* scenes (``gram``, the Gram matrix of
    the raw per-image gradients: :func:`per_sample_gradient_gram`), with the number of scenes
    and of ordered pairs of different scenes they were summed over. An image's overlap with
    itself, or with its own scene's other views, would count as overlap with the rest of psi's
    data and penalise the bins psi favours for being favoured."""
    count = cosines.numel()
    if gram.shape != (count, count) or not cells.shape == scenes.shape == (count,):
        raise OptimizerError(f"mixture_cell_sums: cosines {tuple(cosines.shape)}, gram {tuple(gram.shape)}, cells "
                             f"{tuple(cells.shape)} and scenes {tuple(scenes.shape)} must describe the same N images")
    scene_ids, scene_index = scenes.unique(return_inverse=True)
    scene_count = scene_ids.numel()
    if scene_count < 2:
        raise OptimizerError("mixture_cell_sums: needs at least 2 scenes (overlaps are measured between scenes)")
    gram = gram.detach()
    norms = gram.diagonal().clamp_min(torch.finfo(gram.dtype).tiny).sqrt()
    overlaps = gram / (norms[:, None] * norms[None, :]) * (scene_index[:, None] != scene_index[None, :]).to(gram)
    membership = torch.nn.functional.one_hot(cells, cell_count).to(gram)  # N x A
    aligned = membership.T @ cosines.detach().to(gram)
    return aligned, membership.T @ overlaps @ membership, scene_count, scene_count * (scene_count - 1)


def mixture_alignment_gradient(
    logits: Float[Tensor, "C K"], aligned: Float[Tensor, "A"], overlap: Float[Tensor, "A A"]
) -> tuple[Float[Tensor, "C K"], dict[str, float]]:
    """The bins' gradient of ``-J``, ``J = cos(u, m)``, where ``m = E_{x ~ psi} [g(x) / |g(x)|]``
    is the mean unit training gradient of psi's images: how well one step on psi's data as a
    whole points along u (an optimal-size step on an isotropic quadratic model of the validation
    loss), instead of the mean over images of each one's cosine, which is linear in the bin
    probabilities, so its maximiser is always a single bin (docs/findings.md, finding 22). Its derivative
    by a cell's probability is ``(r_a - J m.g_a/|m|) / |m|``: the cell's own cosine less its
    overlap with what psi's data already teach, so a bin psi already draws often gains less from
    being drawn more.

    ``aligned[a]`` is a scene's expected sum of cosines over its images in cell a (cell
    ``c * K + k``: row c of ``logits``, bin k) and ``overlap[a, b]`` the expected sum of
    unit-gradient overlaps between one scene's images in cell a and another's in cell b: the
    per-scene and per-pair means of :func:`mixture_cell_sums`. Then ``u.m/|u| = p.aligned`` and
    ``|m|^2 = p^T overlap p`` with ``p`` the flattened bin probabilities. Returns the gradient
    (detached) and diagnostics ``mixture_cosine`` (J) and ``mixture_norm`` (|m|); when the
    estimate of ``|m|^2`` is not positive (a few scenes whose gradients disagree) the gradient is
    that of ``p.aligned`` alone, flagged ``mixture_fallback``."""
    if aligned.shape != (logits.numel(),) or overlap.shape != (logits.numel(), logits.numel()):
        raise OptimizerError(f"mixture_alignment_gradient: aligned {tuple(aligned.shape)} and overlap "
                             f"{tuple(overlap.shape)} must have one entry per cell of logits {tuple(logits.shape)}")
    logits = logits.detach().clone().requires_grad_(True)
    probs = logits.softmax(-1).reshape(-1)
    dot_u = probs @ aligned.detach().to(probs)
    norm_sq = probs @ overlap.detach().to(probs) @ probs
    fallback = not bool(norm_sq > 0)
    objective = dot_u if fallback else dot_u / norm_sq.sqrt()
    (gradient,) = torch.autograd.grad(-objective, logits)
    return gradient.detach(), {"mixture_cosine": float(objective.detach()),
                               "mixture_norm": float(norm_sq.detach().clamp_min(0).sqrt()),
                               "mixture_fallback": fallback}


@dataclass
class MixtureStatistics:
    """Recency-weighted running means of :func:`mixture_cell_sums` over outer iterations: one
    iteration's dozen scenes estimate ``|m|^2`` too noisily (docs/findings.md, finding 25), and a bin's
    cells need not change fast (the detector moves by a few steps per iteration). Plain fields,
    so ``dataclasses.asdict`` / ``MixtureStatistics(**state)`` checkpoint it."""

    decay: float = 0.9
    """Weight of the old sums at each update."""
    aligned_sums: Tensor | None = None
    overlap_sums: Tensor | None = None
    scenes: float = 0.0
    """Decayed number of scenes in aligned_sums."""
    pairs: float = 0.0
    """Decayed number of ordered pairs of different scenes in overlap_sums."""

    def update(self, cosines: Float[Tensor, "N"], gram: Float[Tensor, "N N"], cells: Int[Tensor, "N"],
               scenes: Int[Tensor, "N"], cell_count: int) -> None:
        if not 0 <= self.decay < 1:
            raise OptimizerError(f"MixtureStatistics.decay must be in [0, 1), got {self.decay}")
        aligned, overlap, scene_count, pair_count = mixture_cell_sums(cosines, gram, cells, scenes, cell_count)
        if self.aligned_sums is None:
            self.aligned_sums, self.overlap_sums = torch.zeros_like(aligned), torch.zeros_like(overlap)
        self.aligned_sums = self.decay * self.aligned_sums.to(aligned) + aligned
        self.overlap_sums = self.decay * self.overlap_sums.to(overlap) + overlap
        self.scenes = self.decay * self.scenes + scene_count
        self.pairs = self.decay * self.pairs + pair_count

    def gradient(self, logits: Float[Tensor, "C K"]) -> tuple[Float[Tensor, "C K"], dict[str, float]]:
        """:func:`mixture_alignment_gradient` at the running means (after an update)."""
        if self.aligned_sums is None:
            raise OptimizerError("MixtureStatistics.gradient: no batch yet (call update first)")
        return mixture_alignment_gradient(logits, self.aligned_sums / self.scenes, self.overlap_sums / self.pairs)


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
