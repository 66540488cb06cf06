"""Outer-gradient estimators: unbiasedness of the score function, per-sample alignment, and
the split of parts between the pathwise and score-function estimates."""

import math
from dataclasses import asdict, replace

import pytest
import torch

from optimizer.estimators import (
    MixtureStatistics,
    MovingAverageBaseline,
    enumerated_bin_gradient,
    estimator_parts,
    leave_one_out_baseline,
    mixture_alignment_gradient,
    mixture_cell_sums,
    normalise_alignment,
    outer_gradient,
    per_sample_gradient_gram,
    per_sample_gradient_norms,
    score_function_surrogate,
)
from optimizer.hypergradient import hvp_from_gradients, inverse_hvp, mixed_grad_from_gradients
from optimizer.psi import PARTS, OptimizerError, Psi, PsiConfig


def _azimuth_only(bins: int) -> PsiConfig:
    return replace(PsiConfig(azimuth_bins=bins).frozen(), learn_azimuth=True)


def test_score_function_estimate_is_unbiased_and_a_baseline_cuts_its_variance():
    psi = Psi(_azimuth_only(5)).double()
    with torch.no_grad():
        psi.azimuth_logits.copy_(torch.tensor([[0.5, -0.3, 0.2, 1.0, -1.0]]))
    probs = psi.azimuth_probs()[0].detach()
    cost = torch.tensor([3.0, -1.0, 2.0, 0.5, 4.0], dtype=torch.float64) + 10.0
    (exact,) = torch.autograd.grad((psi.azimuth_probs()[0] * cost).sum(), psi.azimuth_logits)

    noise = psi.sample(40_000, torch.Generator().manual_seed(0)).noise
    chosen = noise.azimuth_bin[:, 0]
    rewards = -cost[chosen]  # reward = -cost, so the estimate is of d E[cost] / d logits
    errors = {}
    for baseline in (0.0, -12.0):
        psi.zero_grad()
        score_function_surrogate(psi.log_prob(noise, parts={"azimuth"}), rewards, baseline).backward()
        estimate = psi.azimuth_logits.grad[0]
        contributions = -(rewards - baseline)[:, None] * (torch.nn.functional.one_hot(chosen, 5) - probs)
        torch.testing.assert_close(estimate, contributions.mean(0), rtol=1e-4, atol=1e-4)
        standard_error = contributions.std(0) / math.sqrt(len(chosen))
        assert ((estimate - exact[0]).abs() < 4 * standard_error).all(), baseline
        errors[baseline] = standard_error
    assert (errors[-12.0] < 0.5 * errors[0.0]).all()


def test_score_function_hypergradient_is_unbiased_on_a_categorical_ridge_problem():
    """Training inputs drawn from K prototypes with probabilities softmax(psi); ridge inner
    problem in closed form; the exact dL_val/dpsi by autograd through it."""
    g = torch.Generator().manual_seed(3)
    kw = dict(generator=g, dtype=torch.float64)
    prototypes, targets = torch.randn(4, 3, **kw), torch.randn(4, **kw)
    x_val, y_val, lam = torch.randn(10, 3, **kw), torch.randn(10, **kw), 0.2
    psi = Psi(_azimuth_only(4)).double()
    with torch.no_grad():
        psi.azimuth_logits.copy_(torch.tensor([[0.4, -0.5, 0.1, 0.3]]))

    def theta_star(p):
        a = (p[:, None, None] * prototypes[:, :, None] * prototypes[:, None, :]).sum(0) + lam * torch.eye(3, dtype=p.dtype)
        return torch.linalg.solve(a, (p[:, None] * prototypes * targets[:, None]).sum(0))

    def val_loss(theta):
        return ((x_val @ theta - y_val) ** 2).mean()

    (exact,) = torch.autograd.grad(val_loss(theta_star(psi.azimuth_probs()[0])), psi.azimuth_logits)

    probs = psi.azimuth_probs()[0].detach()
    theta = theta_star(probs).detach().requires_grad_()
    expected_train = (probs * (prototypes @ theta - targets) ** 2).sum() + lam * (theta**2).sum()
    hvp = hvp_from_gradients(torch.autograd.grad(expected_train, [theta], create_graph=True), [theta])
    u = inverse_hvp(hvp, torch.autograd.grad(val_loss(theta), [theta]), method="cg", steps=3, tolerance=0.0)

    noise = psi.sample(20_000, torch.Generator().manual_seed(4)).noise
    chosen = noise.azimuth_bin[:, 0]
    # Per-sample alignment u . dl_i/dtheta of l_i = (x_i . theta - y_i)^2 + lam |theta|^2.
    residual = prototypes[chosen] @ theta.detach() - targets[chosen]
    alignment = 2 * residual * (prototypes[chosen] @ u[0]) + 2 * lam * (theta.detach() @ u[0])
    psi.zero_grad()
    rewards = outer_gradient("score", u, log_prob=psi.log_prob(noise), alignment=alignment, normalise="none")
    contributions = -rewards[:, None] * (torch.nn.functional.one_hot(chosen, 4) - probs)
    standard_error = contributions.std(0) / math.sqrt(len(chosen))
    assert ((psi.azimuth_logits.grad[0] - exact[0]).abs() < 4 * standard_error).all()
    assert (standard_error < 0.1 * exact[0].abs().max()).all()  # the check has power


def test_alignment_normalisations():
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(2, 3, generator=g).requires_grad_(), torch.randn(2, generator=g).requires_grad_()
    inputs, targets = torch.randn(6, 3, generator=g), torch.randn(6, 2, generator=g)
    direction = [torch.randn(2, 3, generator=g), torch.randn(2, generator=g)]
    losses = ((inputs @ weight.T + bias - targets) ** 2).sum(-1)
    per_sample = [torch.autograd.grad(loss, [weight, bias], retain_graph=True) for loss in losses]
    dots = torch.stack([sum((d * gi).sum() for d, gi in zip(direction, grads)) for grads in per_sample])
    norms = torch.stack([torch.cat([gi.reshape(-1) for gi in grads]).norm() for grads in per_sample])
    direction_norm = torch.cat([d.reshape(-1) for d in direction]).norm()

    torch.testing.assert_close(per_sample_gradient_norms(losses, [weight, bias]), norms)
    assert torch.equal(normalise_alignment(dots, "none"), dots)
    standardised = normalise_alignment(dots, "standardise")
    torch.testing.assert_close(standardised, (dots - dots.mean()) / dots.std(unbiased=False))
    cosine = normalise_alignment(dots, "cosine", gradient_norms=norms, direction_norm=direction_norm)
    assert (cosine.abs() <= 1 + 1e-6).all()
    torch.testing.assert_close(cosine, dots / (norms * direction_norm))
    with pytest.raises(OptimizerError, match="needs gradient_norms"):
        normalise_alignment(dots, "cosine")
    with pytest.raises(OptimizerError, match="unknown normalise"):
        normalise_alignment(dots, "rank")


def test_both_gives_each_part_exactly_one_estimate():
    for estimator in ("pathwise", "score", "both"):
        pathwise, score = estimator_parts(estimator)
        assert not pathwise & score
    assert estimator_parts("both")[0] | estimator_parts("both")[1] == set(PARTS)

    config = PsiConfig(num_classes=2, max_objects=2, num_backgrounds=2)
    psi = Psi(config)
    noise = psi.sample(12, 6).noise
    g = torch.Generator().manual_seed(2)
    theta = torch.randn(8, generator=g).requires_grad_()
    direction = [torch.randn(8, generator=g)]

    def features(scene):
        """A stand-in for rendered images: smooth functions of every sampled float."""
        return torch.cat(
            [
                torch.stack([scene.elevation, scene.distance.log(), scene.exposure, scene.azimuth.sin(), scene.azimuth.cos()], -1),
                scene.color_gain,
            ],
            -1,
        ).sum(1)

    def losses(x):
        return (x @ theta - 1.0) ** 2

    def alignment(x):
        """u . dl_i/dtheta for l_i = (x_i . theta - 1)^2."""
        return 2 * (x @ theta.detach() - 1.0) * (x @ direction[0])

    def run(estimator):
        psi.zero_grad()
        pathwise_parts, score_parts = estimator_parts(estimator)
        x = features(psi.replay(noise, pathwise_parts))
        x_leaf = x.detach().requires_grad_()
        mixed = mixed_grad_from_gradients(torch.autograd.grad(losses(x_leaf).mean(), [theta], create_graph=True), x_leaf)
        outer_gradient(
            estimator,
            direction,
            outputs=x,
            mixed_grad=mixed,
            log_prob=psi.log_prob(noise, score_parts),
            alignment=alignment(x.detach()),
            normalise="none",
        )
        return {name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for name, p in psi.named_parameters()}

    pathwise, score, both = run("pathwise"), run("score"), run("both")
    part_of = {id(tensor): part for part, tensors in psi.part_parameters().items() for tensor in tensors}
    for name, tensor in psi.named_parameters():
        # Photometric parts pathwise; discrete and geometric ones (whose boxes move) by the score function.
        reference = score if part_of[id(tensor)] in estimator_parts("both")[1] else pathwise
        torch.testing.assert_close(both[name], reference[name], msg=name)
    assert estimator_parts("both")[0] == {"exposure", "color_gain"}
    assert pathwise["azimuth_logits"].abs().sum() > 0  # the straight-through path exists ...
    assert not torch.allclose(both["azimuth_logits"], pathwise["azimuth_logits"])  # ... and "both" does not add it
    with pytest.raises(OptimizerError, match="needs log_prob and alignment"):
        outer_gradient("score", direction, outputs=torch.zeros(1, requires_grad=True))


def test_moving_average_baseline():
    baseline = MovingAverageBaseline(decay=0.5)
    assert baseline.update(torch.tensor([1.0, 3.0])) == 2.0  # first batch: its own mean
    assert baseline.update(torch.tensor([6.0])) == 2.0  # then the earlier average
    assert baseline.value == 4.0
    assert MovingAverageBaseline(**asdict(baseline)) == baseline


def test_pose_groups_share_all_but_the_azimuth_and_keep_the_bin_probabilities():
    config = PsiConfig(num_classes=3, max_objects=2, num_backgrounds=2)
    psi = Psi(config)
    with torch.no_grad():
        psi.azimuth_logits.copy_(torch.tensor([0.8, -0.4, 0.1, 0.0, -1.0, 0.3, 0.5, -0.2]).expand(3, 8))
    noise = psi.sample(30_000, torch.Generator().manual_seed(7), pose_group=4).noise
    leader = torch.arange(noise.batch_size) // 4 * 4
    for name in ("count", "class_ids", "elevation_logit", "log_distance", "exposure", "log_color_gain", "offset",
                 "background_ids", "background_crop", "background_color"):
        assert torch.equal(getattr(noise, name), getattr(noise, name)[leader]), name
    bins = noise.azimuth_bin[:, 0]
    assert (bins != bins[leader]).any() and (noise.azimuth_offset != noise.azimuth_offset[leader]).any()
    # Each image is still an exact draw from psi: chi-square of the bins against its probabilities.
    observed = torch.bincount(bins, minlength=8).double()
    expected = psi.azimuth_probs()[0].detach().double() * len(bins)
    chi_square = float(((observed - expected) ** 2 / expected).sum())
    assert chi_square < 24.3  # 7 degrees of freedom, p = 0.001
    assert torch.equal(psi.sample(9, 3, pose_group=1).noise.azimuth_bin, psi.sample(9, 3).noise.azimuth_bin)
    with pytest.raises(OptimizerError, match="pose_group must be >= 1"):
        psi.sample(4, 0, pose_group=0)


def test_leave_one_out_baseline_is_unbiased_and_cancels_what_a_group_shares():
    """Reward = a large per-group nuisance (the class, the background ...) + a small effect of
    the azimuth bin. Scored against its group's others, the azimuth gradient stays unbiased and
    its standard error falls far below the moving-average baseline's."""
    torch.testing.assert_close(leave_one_out_baseline(torch.tensor([1.0, 2.0, 6.0, 4.0, 5.0]), 3),
                               torch.tensor([4.0, 3.5, 1.5, 5.0, 4.0]))
    with pytest.raises(OptimizerError, match="group_size must be >= 2"):
        leave_one_out_baseline(torch.ones(4), 1)

    psi = Psi(_azimuth_only(4)).double()
    with torch.no_grad():
        psi.azimuth_logits.copy_(torch.tensor([[0.3, -0.2, 0.6, 0.0]]))
    effect = torch.tensor([1.0, -0.5, 0.2, 0.4], dtype=torch.float64)
    (exact,) = torch.autograd.grad(-(psi.azimuth_probs()[0] * effect).sum(), psi.azimuth_logits)

    group_size, n = 4, 40_000
    noise = psi.sample(n, torch.Generator().manual_seed(5), pose_group=group_size).noise
    chosen = noise.azimuth_bin[:, 0]
    nuisance = 5.0 * torch.randn(n // group_size, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    rewards = nuisance.repeat_interleave(group_size) + effect[chosen]
    one_hot = torch.nn.functional.one_hot(chosen, 4) - psi.azimuth_probs()[0].detach()

    errors = {}
    for name, baseline in (("moving-average", torch.full_like(rewards, float(rewards.mean()))),
                           ("leave-one-out", leave_one_out_baseline(rewards, group_size))):
        psi.zero_grad()
        score_function_surrogate(psi.log_prob(noise, {"azimuth"}), rewards, baseline).backward()
        # Samples of a group are dependent: the standard error over groups.
        contributions = (-(rewards - baseline)[:, None] * one_hot).reshape(-1, group_size, 4).mean(1)
        errors[name] = contributions.std(0) / math.sqrt(contributions.shape[0])
        torch.testing.assert_close(psi.azimuth_logits.grad[0], contributions.mean(0))
        assert ((psi.azimuth_logits.grad[0] - exact[0]).abs() < 4 * errors[name]).all(), name
    assert (errors["leave-one-out"] < 0.2 * errors["moving-average"]).all()
    assert (errors["leave-one-out"] < 0.1 * exact[0].abs().max()).all()  # the check has power


def test_the_enumerated_bin_gradient_is_the_exact_expectation_gradient() -> None:
    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    rewards = torch.randn(8, generator=torch.Generator().manual_seed(1))
    (-(logits.softmax(-1) * rewards).sum()).backward()
    torch.testing.assert_close(enumerated_bin_gradient(logits, rewards), logits.grad)
    # Bins with the same reward leave psi where it is.
    assert enumerated_bin_gradient(logits, torch.full((8,), 0.3)).abs().max() < 1e-7
    with pytest.raises(OptimizerError, match="one reward per bin"):
        enumerated_bin_gradient(logits, rewards[:7])
    # One row of rewards per row of logits (per class): each row its own expectation, and a
    # constant added to a row (a scene's share of every bin's reward) changes nothing.
    per_row = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    logits.grad = None
    (-(logits.softmax(-1) * per_row).sum()).backward()
    torch.testing.assert_close(enumerated_bin_gradient(logits, per_row), logits.grad)
    shifted = per_row + torch.tensor([[5.0], [-2.0], [0.7]])
    torch.testing.assert_close(enumerated_bin_gradient(logits, shifted), logits.grad)
    with pytest.raises(OptimizerError, match="one reward per bin"):
        enumerated_bin_gradient(logits, per_row[:2])


def _mixture_inputs(gradients: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-image cosines to u and the Gram matrix, as the loop hands them over."""
    return gradients @ u / (gradients.norm(dim=1) * u.norm()), gradients @ gradients.T


def _mixture_gradient(logits, gradients, u, cells, scenes):
    aligned, overlap, scene_count, pairs = mixture_cell_sums(*_mixture_inputs(gradients, u), cells, scenes,
                                                             logits.numel())
    return mixture_alignment_gradient(logits, aligned / scene_count, overlap / pairs)


def test_the_mixture_alignment_is_the_cosine_of_psis_mean_unit_gradient_between_scenes() -> None:
    generator = torch.Generator().manual_seed(0)
    scenes_count, bins, classes = 5, 4, 2
    gradients = torch.randn(scenes_count * bins, 12, generator=generator, dtype=torch.float64) + 0.5
    u = torch.randn(12, generator=generator, dtype=torch.float64) + 0.5
    logits = torch.randn(classes, bins, generator=generator, dtype=torch.float64, requires_grad=True)
    scene_classes = torch.tensor([0, 1, 1, 0, 1])
    class_ids, scenes = scene_classes.repeat_interleave(bins), torch.arange(scenes_count).repeat_interleave(bins)
    image_bins = torch.arange(bins).repeat(scenes_count)
    # Written out with the vectors: each scene's psi-weighted unit gradients, overlaps only
    # between different scenes.
    weights = logits.softmax(-1)[class_ids, image_bins] / scenes_count
    per_scene = torch.stack([(weights[scenes == s, None] * (gradients / gradients.norm(dim=1, keepdim=True))[scenes == s])
                             .sum(0) for s in range(scenes_count)])
    mean = per_scene.sum(0)
    norm_sq = scenes_count / (scenes_count - 1) * (mean @ mean - (per_scene * per_scene).sum())
    expected = (u @ mean) / u.norm() / norm_sq.sqrt()
    (-expected).backward()
    gradient, found = _mixture_gradient(logits, gradients, u, class_ids * bins + image_bins, scenes)
    torch.testing.assert_close(gradient, logits.grad)
    assert found["mixture_cosine"] == pytest.approx(float(expected.detach()))
    assert found["mixture_norm"] == pytest.approx(float(norm_sq.sqrt()))
    assert not found["mixture_fallback"]


def test_the_mixture_statistics_are_recency_weighted_means_over_batches() -> None:
    generator = torch.Generator().manual_seed(4)
    bins, logits = 4, torch.randn(1, 4, generator=generator, dtype=torch.float64)
    batches = []
    for scenes_count in (3, 5):
        gradients = torch.randn(scenes_count * bins, 6, generator=generator, dtype=torch.float64) + 1.0
        batches.append((*_mixture_inputs(gradients, torch.ones(6, dtype=torch.float64)), torch.arange(bins).repeat(
            scenes_count), torch.arange(scenes_count).repeat_interleave(bins)))
    statistics = MixtureStatistics(decay=0.5)
    with pytest.raises(OptimizerError, match="no batch yet"):
        statistics.gradient(logits)
    for batch in batches:
        statistics.update(*batch, bins)
    (a1, o1, s1, p1), (a2, o2, s2, p2) = (mixture_cell_sums(*batch, bins) for batch in batches)
    expected = mixture_alignment_gradient(logits, (0.5 * a1 + a2) / (0.5 * s1 + s2), (0.5 * o1 + o2) / (0.5 * p1 + p2))
    torch.testing.assert_close(statistics.gradient(logits)[0], expected[0])
    # Checkpointed as plain fields: a copy continues identically.
    copy = MixtureStatistics(**asdict(statistics))
    for running in (statistics, copy):
        running.update(*batches[0], bins)
    torch.testing.assert_close(copy.gradient(logits)[0], statistics.gradient(logits)[0])


def _ascend(gradient_of, bins: int, steps: int = 400) -> torch.Tensor:
    logits = torch.zeros(1, bins, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=0.05)
    for _ in range(steps):
        logits.grad = gradient_of(logits.detach())
        optimiser.step()
    return logits.detach().softmax(-1)[0]


def test_the_mixture_alignment_spreads_psi_over_bins_that_teach_different_parts_of_u() -> None:
    # u = e0 + e1: bin 0's images teach e0 (a little better), bin 1's e1, bins 2 and 3 nothing
    # of u; every scene adds its own nuisance direction to all its views.
    generator = torch.Generator().manual_seed(1)
    scenes_count, bins, size = 16, 4, 40
    teach = torch.zeros(bins, size)
    teach[0, 0], teach[1, 1], teach[2, 2], teach[3, 3] = 1.1, 1.0, 1.0, 1.0
    nuisance = torch.zeros(scenes_count, size)
    nuisance[:, 4:] = 0.3 * torch.randn(scenes_count, size - 4, generator=generator)
    gradients = (teach[None] + nuisance[:, None] + 0.05 * torch.randn(scenes_count, bins, size, generator=generator)
                 ).reshape(-1, size)
    u = torch.zeros(size)
    u[:2] = 1.0
    image_bins, scenes = torch.arange(bins).repeat(scenes_count), torch.arange(scenes_count).repeat_interleave(bins)
    mixture = _ascend(lambda logits: _mixture_gradient(logits, gradients, u, image_bins, scenes)[0], bins)
    cosines = _mixture_inputs(gradients, u)[0]
    mean_cosine = _ascend(lambda logits: enumerated_bin_gradient(logits, torch.stack(
        [cosines[image_bins == k].mean() for k in range(bins)])), bins)
    # The mean cosine piles psi onto the best single bin; the mixture keeps both halves of u.
    assert mean_cosine[0] > 0.9
    assert mixture[0] > 0.35 and mixture[1] > 0.35 and mixture[2:].sum() < 0.1


def test_the_mixture_alignment_falls_back_to_the_mean_cosine_and_rejects_bad_inputs() -> None:
    # Two scenes whose gradients point opposite ways: no positive estimate of |m|^2.
    gradients = torch.tensor([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.2], [-1.0, 0.0]])
    u = torch.tensor([0.0, 1.0])
    cosines, gram = _mixture_inputs(gradients, u)
    image_bins, scenes = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1])
    logits = torch.tensor([[0.3, -0.2]], requires_grad=True)
    gradient, found = _mixture_gradient(logits, gradients, u, image_bins, scenes)
    assert found["mixture_fallback"]
    (-(logits.softmax(-1)[0, image_bins] / 2 * cosines).sum()).backward()
    torch.testing.assert_close(gradient, logits.grad)
    with pytest.raises(OptimizerError, match="must describe the same N images"):
        mixture_cell_sums(cosines, gram[:3, :3], image_bins, scenes, 2)
    with pytest.raises(OptimizerError, match="at least 2 scenes"):
        mixture_cell_sums(cosines, gram, image_bins, torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(OptimizerError, match="one entry per cell"):
        mixture_alignment_gradient(logits, torch.zeros(3), torch.zeros(3, 3))
    with pytest.raises(OptimizerError, match="decay must be in"):
        MixtureStatistics(decay=1.0).update(cosines, gram, image_bins, scenes, 2)


def test_the_per_sample_gradient_gram_holds_every_pair_of_gradients() -> None:
    weight = torch.randn(3, 2, generator=torch.Generator().manual_seed(2), requires_grad=True)
    inputs = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    losses = (inputs @ weight).pow(2).sum(1)
    explicit = torch.stack([torch.autograd.grad(loss, weight, retain_graph=True)[0].reshape(-1) for loss in losses])
    torch.testing.assert_close(per_sample_gradient_gram(losses, [weight]), explicit @ explicit.T)
    torch.testing.assert_close(per_sample_gradient_gram(losses, [weight]).diagonal().sqrt(),
                               per_sample_gradient_norms(losses, [weight]))
