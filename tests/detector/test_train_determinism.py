import random

import numpy as np
import torch
import ultralytics.utils.callbacks

from detector.model import DetectorConfig, load_detector
from detector.train import train_on_dataset
from tests.detector.test_train import CLASS_NAMES, SIZE, _write_set


def _train(data, out_dir, seed=0, **overrides) -> dict[str, torch.Tensor]:
    config = DetectorConfig(arch="yolov8n-cpu", class_names=CLASS_NAMES, image_size=SIZE)
    best = train_on_dataset(config, data, epochs=1, image_size=SIZE, out_dir=out_dir, batch_size=8, progress=False,
                            seed=seed, plots=False, val=False, **overrides)
    return load_detector(best).state_dict()


def test_a_training_neither_depends_on_nor_changes_what_the_process_did(tmp_path, generator, monkeypatch):
    """Ultralytics seeds its streams before it imports its integrations, and the first import
    of one in a process draws from ``random`` (comet_ml, rich): a process's first training took
    other augmentations than every later one."""
    data = _write_set(tmp_path / "data", 16, generator)
    other = _write_set(tmp_path / "other", 16, generator)
    first = _train(data, tmp_path / "first")

    streams = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    _train(other, tmp_path / "other_run", seed=1, mosaic=0.0)
    assert random.getstate() == streams[0]
    assert np.array_equal(np.random.get_state()[1], streams[1])
    assert torch.equal(torch.get_rng_state(), streams[2])

    add_integrations = ultralytics.utils.callbacks.add_integration_callbacks

    def first_import(trainer) -> None:
        # More draws than the 5 file picks of Ultralytics' speed check can use up, so that
        # this cannot fall back into step with the undisturbed stream.
        random.getrandbits(32 * 100)
        add_integrations(trainer)

    monkeypatch.setattr(ultralytics.utils.callbacks, "add_integration_callbacks", first_import)
    again = _train(data, tmp_path / "again")

    assert first.keys() == again.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
