"""psi's ``pose`` part: a per-class categorical over each object's resting poses."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from optimizer.psi import OptimizerError, Psi, PsiConfig

POSES = ((0.5, 0.3, 0.2), (1.0,), (0.5, 0.1, 0.1, 0.3))
"""Class 0: canonical + 2 poses; class 1: the canonical only; class 2: canonical + 3 poses."""


def config(**changes) -> PsiConfig:
    return PsiConfig(num_classes=3, max_objects=3, pose_probs=POSES, **changes)


def test_poses_are_drawn_with_the_table_probabilities_and_replayed() -> None:
    psi = Psi(config())
    sample = psi.sample(3000, 0)
    noise, scene = sample.noise, sample.scene
    assert torch.equal(scene.pose_ids, noise.pose_ids)
    assert torch.equal(psi.replay(noise).pose_ids, noise.pose_ids)
    for class_id, row in enumerate(POSES):
        chosen = noise.pose_ids[noise.class_ids == class_id] + 1
        assert int(chosen.max()) < len(row)  # never a pose the object does not have
        frequencies = torch.bincount(chosen, minlength=len(row)).float() / len(chosen)
        torch.testing.assert_close(frequencies, torch.tensor(row), atol=0.04, rtol=0)
    for snapped, row in zip(psi.snapshot()["pose_probs"], POSES):
        assert snapped == pytest.approx(list(row), abs=1e-6)


def test_pose_log_prob_is_the_tables_log_probability_and_learns_by_score_function() -> None:
    psi = Psi(config())
    noise = psi.sample(64, 1).noise
    table = torch.zeros(3, 4)
    for class_id, row in enumerate(POSES):
        table[class_id, : len(row)] = torch.tensor(row)
    expected = torch.where(noise.present, table[noise.class_ids, noise.pose_ids + 1].log(), 0.0).sum(-1)
    torch.testing.assert_close(psi.log_prob(noise, parts={"pose"}).detach(), expected)
    # REINFORCE with a reward for lying class 0 on its first pose moves probability there.
    reward = ((noise.class_ids == 0) & (noise.pose_ids == 0) & noise.present).float().sum(-1)
    (-(reward - reward.mean()) * psi.log_prob(noise, parts={"pose"})).mean().backward()
    before = psi.pose_log_probs().exp()[0, 1].item()
    with torch.no_grad():
        psi.pose_logits -= 1.0 * psi.pose_logits.grad
    assert psi.pose_log_probs().exp()[0, 1].item() > before
    assert psi.pose_log_probs().exp()[1].tolist() == [1.0, 0.0, 0.0, 0.0]  # class 1 has nothing else


def test_without_pose_tables_scenes_have_no_pose_ids_and_seeds_keep_their_scenes() -> None:
    plain, posed = Psi(PsiConfig(num_classes=3, max_objects=3)), Psi(config())
    a, b = plain.sample(32, 7), posed.sample(32, 7)
    assert a.scene.pose_ids is None and (a.noise.pose_ids == -1).all()
    assert torch.equal(a.noise.class_ids, b.noise.class_ids) and torch.equal(a.scene.distance, b.scene.distance)
    assert torch.equal(a.scene.background_crop, b.scene.background_crop)


def test_pose_survives_a_checkpoint_and_old_checkpoints_keep_the_canonical_pose() -> None:
    psi = Psi.from_target(config(), pose_probs=[[0.2, 0.8, 0.0], [1.0], [0.1, 0.2, 0.3, 0.4]])
    restored = Psi(config())
    restored.load_state_dict(psi.state_dict())
    torch.testing.assert_close(restored.pose_log_probs().exp(), psi.pose_log_probs().exp())
    sample = restored.sample(200, 3)
    assert not ((sample.noise.class_ids == 0) & (sample.noise.pose_ids == 1)).any()  # probability 0
    old = {name: value for name, value in psi.state_dict().items() if name != "pose_logits"}
    resumed = Psi(config())
    resumed.load_state_dict(old)
    assert (resumed.sample(50, 0).scene.pose_ids == -1).all()


def test_bad_pose_inputs_name_the_field() -> None:
    with pytest.raises(OptimizerError, match="pose_probs"):
        PsiConfig(num_classes=2, pose_probs=((1.0,),))
    with pytest.raises(OptimizerError, match="pose_probs"):
        PsiConfig(num_classes=1, pose_probs=((0.0, 0.0),))
    with pytest.raises(OptimizerError, match="pose_probs"):
        Psi.from_target(config(), pose_probs=[[1.0]])
    noise = Psi(config()).sample(8, 0).noise
    with pytest.raises(OptimizerError, match="pose ids"):
        Psi(replace(config(), pose_probs=((1.0,), (1.0,), (1.0, 1.0)))).replay(noise)
