"""Random-search proposals and the total-variation distance used by the benchmarks."""

import pytest
import torch

from optimizer.baselines import azimuth_total_variation, random_candidate
from optimizer.psi import Psi, PsiConfig


def test_random_candidates_redraw_only_the_learnable_parts():
    start = Psi(PsiConfig(num_classes=3, num_backgrounds=2).frozen())
    first = random_candidate(start, {"azimuth", "distance"}, torch.Generator().manual_seed(0))
    again = random_candidate(start, {"azimuth", "distance"}, torch.Generator().manual_seed(0))
    for name, value in start.state_dict().items():
        changed = not torch.equal(first.state_dict()[name], value)
        assert changed == (name in ("azimuth_logits", "distance_loc")), name
        assert torch.equal(first.state_dict()[name], again.state_dict()[name]), name
    assert not torch.equal(first.azimuth_probs()[0], first.azimuth_probs()[1])  # one draw per class
    assert list(first.parameters()) == []  # candidates are fixed distributions
    ratio = (first.distance_loc - start.distance_loc).exp()
    assert ((ratio > 0.6) & (ratio < 1.65)).all()  # within exp(+-0.5) of the start

    shared = random_candidate(start, {"azimuth", "elevation"}, torch.Generator().manual_seed(1), shared=True)
    assert torch.equal(shared.azimuth_logits[0], shared.azimuth_logits[2])
    assert torch.equal(shared.elevation_loc[0], shared.elevation_loc[1])


def test_azimuth_total_variation():
    uniform = [1 / 8] * 8
    target = [0, 1, 1, 0, 0, 0, 0, 0]  # unnormalised target histograms are normalised
    assert azimuth_total_variation(uniform, target) == pytest.approx(0.75)
    assert azimuth_total_variation([[0, 0.5, 0.5, 0, 0, 0, 0, 0]] * 3, target) == pytest.approx(0.0)
    assert azimuth_total_variation([[0, 0, 0, 0, 1, 0, 0, 0], uniform], target) == pytest.approx((1 + 0.75) / 2)
