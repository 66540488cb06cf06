"""Random-search proposals and the total-variation distance used by the benchmarks."""

import pytest
import torch
from torch import nn

from optimizer.baselines import azimuth_total_variation, psi_config, random_candidate
from optimizer.config import OptimizeConfig, PsiSettings
from optimizer.psi import OptimizerError, Psi, PsiConfig
from renderer.object_field import ObjectField, ObjectFieldConfig


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


def test_appearance_candidates_are_drawn_per_class_over_each_class_s_choices():
    start = Psi(PsiConfig(num_classes=2, appearance_embeddings=(3, 1)).frozen())
    candidate = random_candidate(start, {"appearance"}, torch.Generator().manual_seed(2), shared=True)
    probs = candidate.appearance_probs()
    assert not torch.allclose(probs, start.appearance_probs())
    assert (probs[1, 2:] == 0).all() and torch.allclose(probs.sum(-1), torch.ones(2))
    assert not torch.equal(candidate.appearance_logits[0, :2], candidate.appearance_logits[1, :2])  # never shared


def test_psi_config_takes_the_appearance_embeddings_from_the_fields():
    class NerfactoLike(nn.Module):
        appearance_embeddings = 5

    box = torch.tensor([[-0.1] * 3, [0.1] * 3])
    fields = [NerfactoLike(), ObjectField(ObjectFieldConfig(plane_resolutions=(8,)), box), nn.Identity()]
    config = psi_config(OptimizeConfig(psi=PsiSettings(learnable=["azimuth", "appearance"])), fields, num_backgrounds=2)
    assert config.num_classes == 3 and config.appearance_embeddings == (5, 0, 0)
    assert config.learn_appearance and not config.learn_distance
    with pytest.raises(OptimizerError, match="set by the loop"):
        psi_config(OptimizeConfig(psi=PsiSettings(initial={"appearance_embeddings": [1, 1, 1]})), fields, num_backgrounds=0)


def test_azimuth_total_variation():
    uniform = [1 / 8] * 8
    target = [0, 1, 1, 0, 0, 0, 0, 0]  # unnormalised target histograms are normalised
    assert azimuth_total_variation(uniform, target) == pytest.approx(0.75)
    assert azimuth_total_variation([[0, 0.5, 0.5, 0, 0, 0, 0, 0]] * 3, target) == pytest.approx(0.0)
    assert azimuth_total_variation([[0, 0, 0, 0, 1, 0, 0, 0], uniform], target) == pytest.approx((1 + 0.75) / 2)
