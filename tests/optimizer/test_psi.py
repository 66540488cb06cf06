"""psi: sampling frequencies, densities, replay, gradients, fixed parts, snapshots, appearance."""

import json
import math
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from scipy import stats

from optimizer.estimators import estimator_parts
from optimizer.psi import PARTS, REPARAMETERISED_PARTS, OptimizerError, Psi, PsiConfig

TARGET_BINS = [[0.30, 0.20, 0.15, 0.10, 0.10, 0.08, 0.05, 0.02], [0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]]


def _chi_square_p(observed: np.ndarray, probs: np.ndarray) -> float:
    keep = probs > 0
    assert observed[~keep].sum() == 0, "a zero-probability choice was drawn"
    return stats.chisquare(observed[keep], observed.sum() * probs[keep] / probs[keep].sum()).pvalue


@pytest.fixture(scope="module")
def target_draw():
    config = PsiConfig(num_classes=2, max_objects=3, num_backgrounds=3)
    psi = Psi.from_target(
        config,
        azimuth_bin_probs=TARGET_BINS,
        class_probs=[0.7, 0.3],
        count_probs=[0.5, 0.3, 0.2],
        background_probs=[0.1, 0.2, 0.3, 0.4],
    )
    return psi, psi.sample(4000, torch.Generator().manual_seed(0))


def test_sampler_reproduces_the_bin_probabilities(target_draw):
    psi, sample = target_draw
    scene, noise = sample.scene, sample.noise
    width = 2 * math.pi / 8
    azimuth = scene.azimuth[scene.present]
    assert ((azimuth >= 0) & (azimuth < 2 * math.pi)).all()
    # The value lies inside the recorded bin exactly (straight-through hard sample).
    assert torch.equal(torch.floor(azimuth / width).long(), noise.azimuth_bin[scene.present])
    for c in range(2):
        bins = torch.floor(scene.azimuth[scene.present & (scene.object_ids == c)] / width).long()
        observed = np.bincount(bins.numpy(), minlength=8)
        assert _chi_square_p(observed, np.array(TARGET_BINS[c])) > 1e-3
    # Classes, counts and backgrounds too.
    assert _chi_square_p(np.bincount(scene.object_ids[scene.present].numpy(), minlength=2), np.array([0.7, 0.3])) > 1e-3
    assert _chi_square_p(np.bincount(noise.count.numpy(), minlength=4)[1:], np.array([0.5, 0.3, 0.2])) > 1e-3
    backgrounds = torch.where(scene.background_ids < 0, 3, scene.background_ids)
    assert _chi_square_p(np.bincount(backgrounds.numpy(), minlength=4), np.array([0.1, 0.2, 0.3, 0.4])) > 1e-3


def test_log_prob_matches_the_sampling_frequencies(target_draw):
    psi, sample = target_draw
    noise = sample.noise
    n = noise.batch_size
    for part, outcome in (("count", noise.count), ("background", noise.background_ids)):
        prob = psi.log_prob(noise, parts={part}).exp()
        for value in outcome.unique():
            chosen = outcome == value
            frequency = chosen.float().mean()
            assert torch.allclose(prob[chosen], prob[chosen][0])  # one probability per outcome
            assert abs(prob[chosen][0] - frequency) < 4 * math.sqrt(frequency * (1 - frequency) / n)
    # Azimuth: exp(log_prob) of a one-object image is the bin probability over the bin width.
    single = noise.index(noise.count == 1)
    density = psi.log_prob(single, parts={"azimuth", "class_mix"}).exp() * (2 * math.pi / 8)
    cells = single.class_ids[:, 0] * 8 + single.azimuth_bin[:, 0]
    frequencies = torch.bincount(cells, minlength=16).float() / single.batch_size
    for cell in cells.unique():
        f = frequencies[cell]
        assert abs(density[cells == cell][0] - f) < 4 * math.sqrt(f * (1 - f) / single.batch_size)
    # Logits are defined up to a constant: shifting them changes no probability.
    shifted = Psi(psi.config)
    shifted.load_state_dict({name: value + 1.5 if name.endswith("logits") else value for name, value in psi.state_dict().items()})
    torch.testing.assert_close(shifted.log_prob(noise), psi.log_prob(noise))


def test_log_prob_of_continuous_parts_is_the_true_density():
    from torch.distributions import AffineTransform, LogNormal, Normal, SigmoidTransform, TransformedDistribution

    config = PsiConfig(elevation_range_deg=(-10.0, 50.0))
    psi = Psi(config)
    with torch.no_grad():
        psi.elevation_loc.fill_(0.4)
        psi.distance_loc.fill_(-0.3)
        psi.color_gain_loc.copy_(torch.tensor([[0.1, -0.2, 0.05]]))
    noise = psi.sample(50, 3).noise
    scene = psi.replay(noise)
    lo, hi = math.radians(-10), math.radians(50)
    elevation = TransformedDistribution(
        Normal(0.4, math.exp(psi.elevation_log_scale.item())), [SigmoidTransform(), AffineTransform(lo, hi - lo)]
    )
    checks = {
        "elevation": elevation.log_prob(scene.elevation[:, 0].detach()),
        "distance": LogNormal(-0.3, 0.2).log_prob(scene.distance[:, 0].detach()),
        "exposure": Normal(0.0, 0.3).log_prob(scene.exposure[:, 0].detach()),
        "color_gain": LogNormal(torch.tensor([0.1, -0.2, 0.05]), 0.05).log_prob(scene.color_gain[:, 0].detach()).sum(-1),
    }
    for part, reference in checks.items():
        torch.testing.assert_close(psi.log_prob(noise, parts={part}).detach(), reference, rtol=1e-4, atol=1e-3)


def test_replay_reproduces_the_sample_and_carries_gradients_to_every_learnable_part():
    config = PsiConfig(
        num_classes=3, max_objects=3, num_backgrounds=2, temperature=0.7, appearance_embeddings=(2, 0, 3),
        pose_probs=((0.5, 0.3, 0.2), (1.0,), (0.6, 0.4)),
    )
    psi = Psi(config)
    with torch.no_grad():
        for p in psi.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    sample = psi.sample(16, torch.Generator().manual_seed(5))
    replayed = psi.replay(sample.noise)
    for name, value in vars(sample.scene).items():
        assert (getattr(replayed, name) is None) if value is None else torch.equal(getattr(replayed, name), value), name
    assert sample.scene.azimuth.requires_grad and replayed.distance.requires_grad

    weights = torch.Generator().manual_seed(9)
    loss = sum(
        (torch.randn(getattr(replayed, name).shape, generator=weights) * getattr(replayed, name)).sum()
        for name in ("azimuth", "elevation", "distance", "exposure", "color_gain")
    )
    loss.backward()
    for part, params in psi.part_parameters().items():
        if part in REPARAMETERISED_PARTS:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), part
        else:
            assert all(p.grad is None for p in params), part  # no pathwise gradient to integers
    psi.zero_grad()
    psi.log_prob(sample.noise).sum().backward()
    for part, params in psi.part_parameters().items():
        assert all(p.grad.abs().sum() > 0 for p in params), part


def test_straight_through_azimuth_gradient_is_the_relaxed_one():
    psi = Psi(PsiConfig(azimuth_bins=6, temperature=0.5))
    with torch.no_grad():
        psi.azimuth_logits.copy_(torch.tensor([[0.3, -0.2, 0.9, 0.0, -1.0, 0.4]]))
    noise = psi.sample(1, 11).noise
    (grad,) = torch.autograd.grad(psi.replay(noise).azimuth.sum(), psi.azimuth_logits)
    logits = psi.azimuth_logits.detach().requires_grad_()
    soft = ((logits[0] + noise.azimuth_gumbel[0, 0]) / 0.5).softmax(-1)
    relaxed = (soft * (torch.arange(6) + noise.azimuth_offset[0, 0]) * (2 * math.pi / 6)).sum()
    (expected,) = torch.autograd.grad(relaxed, logits)
    torch.testing.assert_close(grad, expected)


def test_replay_after_an_update_keeps_choices_and_moves_continuous_values():
    psi = Psi(PsiConfig(num_classes=2, max_objects=2))
    sample = psi.sample(8, 2)
    with torch.no_grad():
        psi.distance_loc.add_(0.1)
        psi.azimuth_logits.add_(torch.randn(2, 8))
    replayed = psi.replay(sample.noise)
    assert torch.equal(replayed.azimuth, sample.scene.azimuth)  # bins kept as recorded
    torch.testing.assert_close(replayed.distance, sample.scene.distance * math.exp(0.1))


def test_fixed_parts_get_no_gradient():
    config = PsiConfig(num_classes=2, learn_azimuth=False, learn_distance=False, learn_class_mix=False)
    psi = Psi(config)
    names = {name for name, _ in psi.named_parameters()}
    assert "azimuth_logits" not in names and "distance_loc" not in names and "class_logits" not in names
    assert "elevation_loc" in names
    assert set(psi.learnable_parts) == set(PARTS) - {"azimuth", "distance", "class_mix"}
    sample = psi.sample(6, 0)
    assert not sample.scene.azimuth.requires_grad and not sample.scene.distance.requires_grad
    assert sample.scene.elevation.requires_grad
    assert not psi.log_prob(sample.noise, parts={"azimuth", "distance", "class_mix"}).requires_grad
    # Learnable parts left out of pathwise_parts are detached too.
    only_elevation = Psi(PsiConfig(num_classes=2)).replay(sample.noise, pathwise_parts={"elevation"})
    assert only_elevation.elevation.requires_grad
    assert not only_elevation.azimuth.requires_grad and not only_elevation.exposure.requires_grad
    assert Psi.uniform(config).learnable_parts == () and list(Psi.uniform(config).parameters()) == []


def test_sampling_is_reproducible_from_the_seed():
    psi = Psi(PsiConfig(num_classes=2, max_objects=2))
    a, b, c = psi.sample(5, 7), psi.sample(5, torch.Generator().manual_seed(7)), psi.sample(5, 8)
    assert torch.equal(a.scene.azimuth, b.scene.azimuth) and torch.equal(a.noise.count, b.noise.count)
    assert not torch.equal(a.scene.azimuth, c.scene.azimuth)


def test_several_objects_sit_side_by_side_inside_the_image():
    config = PsiConfig(max_objects=3, object_spacing=0.6, offset_range=(0.3, 0.2))
    scene = Psi.from_target(config, count_probs=[0, 0, 1]).sample(200, 4).scene
    x = scene.offset[..., 0]
    assert scene.present.all() and (scene.offset.abs() < 1).all()
    assert ((x[:, 1:] - x[:, :-1]) >= 0.3 - 1e-6).all()  # neighbours at least spacing / 2 apart
    assert (scene.roll == 0).all()


def test_per_class_initial_views_and_an_offset_centre():
    config = PsiConfig(num_classes=2, distance_median=(0.3, 0.9), distance_log_std=(0.1, 0.2),
                       elevation_median_deg=(10.0, 40.0), offset_centre=(0.2, -0.3), offset_range=(0.1, 0.05))
    psi = Psi(config)
    assert psi.distance_loc.exp().tolist() == pytest.approx([0.3, 0.9])
    assert psi.distance_log_scale.exp().tolist() == pytest.approx([0.1, 0.2])
    assert psi.snapshot()["elevation_deg"]["median"] == pytest.approx([10.0, 40.0])
    offset = psi.sample(200, 0).scene.offset[:, 0]
    assert ((offset[:, 0] - 0.2).abs() <= 0.1 + 1e-6).all() and ((offset[:, 1] + 0.3).abs() <= 0.05 + 1e-6).all()
    # The default centre (0, 0) draws exactly what was drawn before the centre existed.
    assert torch.equal(Psi(PsiConfig()).sample(8, 1).scene.offset, Psi(PsiConfig(offset_centre=(0.0, 0.0))).sample(8, 1).scene.offset)


def test_temperature_schedule_and_entropy():
    psi = Psi(PsiConfig(temperature=1.0, temperature_decay=0.5, temperature_min=0.2))
    assert psi.temperature == 1.0
    psi.step_temperature()
    psi.step_temperature()
    assert psi.temperature == 0.25
    psi.step_temperature()
    assert psi.temperature == 0.2
    restored = Psi(psi.config)
    restored.load_state_dict(psi.state_dict())
    assert restored.temperature == 0.2 and psi.sample(1, 0).noise.temperature == 0.2
    torch.testing.assert_close(psi.entropy(), torch.tensor([math.log(8)]))
    peaked = Psi.from_target(psi.config, azimuth_bin_probs=[1, 0, 0, 0, 0, 0, 0, 0])
    assert peaked.entropy().item() == 0.0


def test_snapshot_is_json_in_degrees_and_metres():
    config = PsiConfig(num_classes=2, elevation_range_deg=(0.0, 60.0), num_backgrounds=1)
    psi = Psi.from_target(
        config, azimuth_bin_probs=TARGET_BINS, elevation_median_deg=[20.0, 40.0], distance_median=0.4, exposure_mean=-1.0
    )
    snapshot = json.loads(json.dumps(psi.snapshot()))
    assert snapshot["azimuth"]["bin_edges_deg"] == [45.0 * k for k in range(9)]
    np.testing.assert_allclose(snapshot["azimuth"]["probs"], TARGET_BINS, atol=1e-6)
    np.testing.assert_allclose(snapshot["elevation_deg"]["median"], [20.0, 40.0], atol=1e-4)
    assert all(lo < m < hi for lo, m, hi in zip(*(snapshot["elevation_deg"][k] for k in ("q10", "median", "q90"))))
    np.testing.assert_allclose(snapshot["distance_m"]["median"], [0.4, 0.4], atol=1e-6)
    np.testing.assert_allclose(snapshot["exposure_stops"]["mean"], [-1.0, -1.0])
    assert snapshot["learnable"] == []
    assert len(snapshot["background_probs"]) == 2


def test_bad_inputs_name_the_problem():
    with pytest.raises(OptimizerError, match="elevation_range_deg"):
        PsiConfig(elevation_range_deg=(40.0, 10.0))
    with pytest.raises(OptimizerError, match="object_spacing"):
        PsiConfig(max_objects=4, object_spacing=0.8)
    with pytest.raises(OptimizerError, match="object_spacing"):
        PsiConfig(offset_centre=(0.85, 0.0), offset_range=(0.2, 0.2))
    with pytest.raises(OptimizerError, match=r"distance_median: needs one value for all classes or one per class \(2\)"):
        PsiConfig(num_classes=2, distance_median=(0.3, 0.4, 0.5))
    with pytest.raises(OptimizerError, match="distance_log_std: must be > 0"):
        PsiConfig(num_classes=2, distance_log_std=(0.1, 0.0))
    with pytest.raises(OptimizerError, match="elevation_median_deg"):
        PsiConfig(num_classes=2, elevation_median_deg=(10.0, 70.0))
    with pytest.raises(OptimizerError, match="azimuth_bin_probs"):
        Psi.from_target(PsiConfig(), azimuth_bin_probs=[0.5, 0.5])
    with pytest.raises(OptimizerError, match="distance_median"):
        Psi.from_target(PsiConfig(num_classes=2), distance_median=[0.3, 0.4, 0.5])
    noise = Psi(PsiConfig(num_classes=3)).sample(2, 0).noise
    with pytest.raises(OptimizerError, match="unknown parts"):
        Psi(PsiConfig(num_classes=3)).log_prob(noise, parts={"lighting"})
    with pytest.raises(OptimizerError, match="num_classes"):
        Psi(PsiConfig(num_classes=1)).replay(noise)
    with pytest.raises(OptimizerError, match="one count per class"):
        PsiConfig(num_classes=2, appearance_embeddings=(3,))
    with_appearance = Psi(PsiConfig(num_classes=3, appearance_embeddings=(4, 4, 4))).sample(8, 0).noise
    with pytest.raises(OptimizerError, match="appearance ids"):
        Psi(PsiConfig(num_classes=3)).replay(with_appearance)
    with pytest.raises(OptimizerError, match=r"appearance_probs\[1\]"):
        Psi.from_target(PsiConfig(num_classes=2, appearance_embeddings=(1, 2)), appearance_probs=[[0.5, 0.5], [1, 0]])


# ---------------------------------------------------------------- appearance

APPEARANCE_PROBS = [[0.5, 0.2, 0.3], [1.0], [0.1, 0.0, 0.4, 0.2, 0.3]]
"""Per class: the average, then each embedding (class 1's object has none, class 2's first
embedding is never drawn)."""


@pytest.fixture(scope="module")
def appearance_draw():
    config = PsiConfig(num_classes=3, max_objects=2, appearance_embeddings=(2, 0, 4))
    psi = Psi.from_target(config, appearance_probs=APPEARANCE_PROBS)
    return psi, psi.sample(4000, torch.Generator().manual_seed(1))


def test_sampled_appearances_reproduce_the_probabilities(appearance_draw):
    psi, sample = appearance_draw
    scene, noise = sample.scene, sample.noise
    assert torch.equal(scene.appearance_ids, noise.appearance_ids)  # -1: the average
    for c, probs in enumerate(APPEARANCE_PROBS):
        choices = scene.appearance_ids[scene.present & (scene.object_ids == c)] + 1
        observed = np.bincount(choices.numpy(), minlength=5)
        # Also checks that no zero-probability choice (past the class's embeddings) was drawn.
        p_value = _chi_square_p(observed, np.array(probs + [0.0] * (5 - len(probs))))
        assert len(probs) == 1 or p_value > 1e-3  # a single choice leaves nothing to compare
    # Shared within pose groups, like everything but the azimuth.
    grouped = psi.sample(400, 2, pose_group=4).noise.appearance_ids.reshape(-1, 4, 2)
    assert (grouped == grouped[:, :1]).all() and (grouped != grouped[:1, :1]).any()
    snapshot = json.loads(json.dumps(psi.snapshot()))
    for reported, expected in zip(snapshot["appearance_probs"], APPEARANCE_PROBS):
        np.testing.assert_allclose(reported, expected, atol=1e-6)


def test_appearance_log_prob_is_the_log_probability_of_each_choice(appearance_draw):
    psi, sample = appearance_draw
    noise = sample.noise
    table = torch.zeros(3, 5)
    for c, probs in enumerate(APPEARANCE_PROBS):
        table[c, : len(probs)] = torch.tensor(probs)
    per_slot = table[noise.class_ids, noise.appearance_ids + 1].log()
    expected = torch.where(noise.present, per_slot, 0.0).sum(-1)
    torch.testing.assert_close(psi.log_prob(noise, parts={"appearance"}), expected)
    torch.testing.assert_close(psi.appearance_probs(), table)


def test_score_function_gradient_reaches_the_appearance_logits():
    psi = Psi(PsiConfig(num_classes=2, max_objects=2, appearance_embeddings=(3, 0)))
    assert "appearance" in estimator_parts("score")[1] and "appearance" in estimator_parts("both")[1]
    assert "appearance" not in estimator_parts("pathwise")[0]
    noise = psi.sample(64, 2).noise
    psi.log_prob(noise, parts={"appearance"}).sum().backward()
    # d log p(choice) / d logits = onehot(choice) - probs, summed over the present slots.
    probs = psi.appearance_probs().detach()
    present = noise.present
    onehot = torch.nn.functional.one_hot(noise.appearance_ids[present] + 1, 4).float()
    expected = torch.zeros(2, 4).index_add_(0, noise.class_ids[present], onehot - probs[noise.class_ids[present]])
    torch.testing.assert_close(psi.appearance_logits.grad, expected)
    assert psi.appearance_logits.grad[0].abs().sum() > 0
    assert (psi.appearance_logits.grad[1] == 0).all()  # one choice: nothing to learn
    # Masked choices stay out of reach of Adam: finite logits, zero probability.
    optimizer = torch.optim.Adam(psi.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.step()
    probs = psi.appearance_probs()
    assert torch.isfinite(psi.appearance_logits).all()
    assert (probs[1, 1:] == 0).all() and not torch.allclose(probs[0, :3], torch.full((3,), 1 / 3))


def test_appearance_from_target_one_row_for_all_classes():
    config = PsiConfig(num_classes=2, appearance_embeddings=(2, 2))
    psi = Psi.from_target(config, appearance_probs=[0, 1, 3])
    torch.testing.assert_close(psi.appearance_probs(), torch.tensor([[0.0, 0.25, 0.75]] * 2))
    assert (psi.sample(200, 0).noise.appearance_ids >= 0).all()  # the average has probability 0
    with pytest.raises(OptimizerError, match="rows for 2 classes"):
        Psi.from_target(config, appearance_probs=[[1, 0, 0]] * 3)


def test_seeds_without_embeddings_keep_their_scenes():
    """The appearance is drawn after everything else, so giving objects embeddings changes no
    other draw, and without embeddings nothing is drawn at all."""
    config = PsiConfig(num_classes=2, max_objects=3, num_backgrounds=2)
    plain, with_embeddings = Psi(config), Psi(replace(config, appearance_embeddings=(3, 5)))
    for pose_group in (1, 4):
        a = plain.sample(32, 7, pose_group=pose_group)
        b = with_embeddings.sample(32, 7, pose_group=pose_group)
        for field in fields(a.noise):
            if field.name != "appearance_ids":
                drawn, redrawn = (torch.as_tensor(getattr(noise, field.name)) for noise in (a.noise, b.noise))
                assert torch.equal(drawn, redrawn), field.name
        for name, value in vars(a.scene).items():
            if name not in ("appearance_ids", "pose_ids"):
                assert torch.equal(value, getattr(b.scene, name)), name
        assert a.scene.appearance_ids is None and (a.noise.appearance_ids == -1).all()
        assert (b.noise.appearance_ids >= 0).any()
    # Without embeddings nothing is drawn; with them, only the appearance's Gumbel noise, last.
    g_plain, g_embedded = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    plain.sample(5, g_plain)
    with_embeddings.sample(5, g_embedded)
    torch.rand((5, 3, 6), generator=g_plain)
    assert torch.equal(g_plain.get_state(), g_embedded.get_state())


def test_appearance_survives_a_checkpoint_and_old_checkpoints_keep_the_average():
    config = PsiConfig(num_classes=2, appearance_embeddings=(3, 1))
    psi = Psi.from_target(config, appearance_probs=[[0.1, 0.2, 0.3, 0.4], [0.6, 0.4]])
    restored = Psi(config)
    restored.load_state_dict(psi.state_dict())
    torch.testing.assert_close(restored.appearance_probs(), psi.appearance_probs())
    assert "appearance_available" not in psi.state_dict()  # derived from the config
    # A checkpoint from before psi had an appearance part: its runs rendered the average only.
    old = {name: value for name, value in psi.state_dict().items() if name != "appearance_logits"}
    resumed = Psi(config)
    resumed.load_state_dict(old)
    torch.testing.assert_close(resumed.appearance_probs(), torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]]))
    assert (resumed.sample(50, 0).scene.appearance_ids == -1).all()
