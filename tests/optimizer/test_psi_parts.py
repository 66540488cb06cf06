"""psi as one object per part: the registry, the parts' declarations, the draws a seed gives."""

import subprocess
import sys

import pytest
import torch

from optimizer.part_names import PARTS, PER_CLASS_PARTS, REGISTRY, SNAPSHOT_KEYS
from optimizer.psi import Psi, PsiConfig
from optimizer.psi_parts import COMPONENTS, DRAW_ORDER, PSI_PARTS

RICH = PsiConfig(num_classes=3, max_objects=3, num_backgrounds=2, appearance_embeddings=(2, 0, 3),
                 pose_probs=((0.5, 0.3, 0.2), (1.0,), (0.6, 0.4)))
"""Every part in use: several classes, objects and backgrounds, embeddings and resting poses."""


def test_every_registered_part_has_its_module_and_every_component_draws_once() -> None:
    assert list(PSI_PARTS) == list(PARTS) == [entry.name for entry in REGISTRY]
    assert all(part.name == name for name, part in PSI_PARTS.items())
    names = [component.name for component in COMPONENTS]
    assert len(names) == len(set(names)) and set(names) == set(PARTS) | {"offsets"}
    assert names[: len(DRAW_ORDER)] == list(DRAW_ORDER)


def test_each_part_declares_the_tensors_it_creates_and_psi_holds_them() -> None:
    psi = Psi(RICH)
    for name, part in PSI_PARTS.items():
        initial = part.initial(RICH)
        assert tuple(initial) == part.tensors, name
        for tensor_name, value in initial.items():
            assert getattr(psi, tensor_name).shape == value.shape, tensor_name
            if name in PER_CLASS_PARTS:
                assert value.shape[0] == RICH.num_classes, tensor_name
    # The state_dict is exactly the parts' tensors and the temperature step, in registry order.
    expected = [tensor for part in PSI_PARTS.values() for tensor in part.tensors] + ["temperature_step"]
    assert list(psi.state_dict()) == expected


def test_snapshot_has_an_entry_per_part_under_its_registered_key() -> None:
    snapshot = Psi(RICH).snapshot()
    assert list(snapshot) == ["temperature", "learnable", *(SNAPSHOT_KEYS[part] for part in PARTS)]


def test_from_target_hands_each_argument_to_its_part_and_refuses_unknown_ones() -> None:
    psi = Psi.from_target(RICH, class_probs=[0.2, 0.3, 0.5], distance_median=0.4, pose_probs=None)
    torch.testing.assert_close(psi.class_probs(), torch.tensor([0.2, 0.3, 0.5]))
    torch.testing.assert_close(psi.distance_loc.exp(), torch.full((3,), 0.4))
    with pytest.raises(TypeError, match=r"unknown arguments \['distance_mean'\]"):
        Psi.from_target(RICH, distance_mean=0.4)


def test_a_seed_gives_the_draws_it_gave_before_psi_was_split_into_parts() -> None:
    """Pinned from the single-module psi (the same generator calls in the same order)."""
    generator = torch.Generator().manual_seed(3)
    noise = Psi(RICH).sample(4, generator, pose_group=2).noise
    assert noise.count.tolist() == [3, 3, 1, 1]
    assert noise.class_ids.tolist() == [[1, 2, 1], [1, 2, 1], [1, 2, 0], [1, 2, 0]]
    assert noise.azimuth_bin.tolist() == [[1, 1, 7], [5, 4, 5], [1, 4, 7], [0, 2, 1]]
    assert noise.background_ids.tolist() == [0, 0, 1, 1]
    assert noise.appearance_ids.tolist() == [[-1, 2, -1], [-1, 2, -1], [-1, 0, 0], [-1, 0, 0]]
    assert noise.pose_ids.tolist() == [[-1, -1, -1], [-1, -1, -1], [-1, 0, 0], [-1, 0, 0]]
    assert torch.rand(1, generator=generator).item() == pytest.approx(0.530169, abs=1e-6)


def test_part_names_and_psi_config_import_without_torch() -> None:
    code = ("import sys, optimizer.part_names, optimizer.psi_config, optimizer.errors; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
