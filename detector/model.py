"""Build, save and load Ultralytics YOLO detection models, fully offline.

Architectures come from the model yamls that ship inside the ``ultralytics`` package, so
nothing is downloaded. A checkpoint written by :func:`save_detector` has the layout of
Ultralytics' own checkpoints and loads with plain ``ultralytics.YOLO(path)``; checkpoints are
read back with :func:`detector.checkpoint.read_detector_checkpoint`, never with Ultralytics'
loader (which unpickles arbitrary code), so the files this project hands to Ultralytics'
trainer are only ones it wrote itself.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import torch
from ultralytics import __version__ as ultralytics_version
from ultralytics.cfg import DEFAULT_CFG, get_cfg
from ultralytics.nn.tasks import DetectionModel, yaml_model_load

from detector.checkpoint import read_detector_checkpoint
from detector.errors import DetectorError

Architecture = Literal["yolov8n", "yolo11n", "yolov8n-cpu"]

MAX_STRIDE = 32
"""Every YOLO yaml used here downsamples by 32: image sides must be multiples of it."""

FROZEN_PARAMETER_NAMES = (".dfl",)
"""Parameters Ultralytics' trainer never trains (the DFL projection is a fixed arange)."""


@dataclass
class DetectorConfig:
    """What detector to build for a job."""

    arch: Architecture = "yolov8n"
    """Model yaml: ``yolov8n``, ``yolo11n``, or ``yolov8n-cpu`` (YOLOv8 at width 0.125 and one
    block per stage, about 0.9 M parameters instead of 3 M, for CPU-only runs and tests).
    Ignored when ``weights`` is given: the checkpoint brings its own architecture."""
    weights: Path | None = None
    """Ultralytics ``.pt`` detection checkpoint to start from, read without running its code
    (:mod:`detector.checkpoint`); its layers are transferred by name and shape, and its
    class-logit rows by class name where the names match."""
    class_names: list[str] = field(default_factory=list)
    """The job's classes, in class-id order."""
    image_size: int = 640
    """Square input side in pixels; a multiple of 32."""
    seed: int = 0
    """Seed of the random initialisation of the layers that are not taken from ``weights``."""

    def __post_init__(self) -> None:
        if self.arch not in ("yolov8n", "yolo11n", "yolov8n-cpu"):
            raise DetectorError(f"unknown detector arch {self.arch!r}: use yolov8n, yolo11n or yolov8n-cpu")
        if not self.class_names:
            raise DetectorError("the detector needs at least one class name")
        if len(set(self.class_names)) != len(self.class_names):
            raise DetectorError(f"duplicate class names in {self.class_names}")
        if self.image_size <= 0 or self.image_size % MAX_STRIDE:
            raise DetectorError(f"image_size {self.image_size} is not a positive multiple of {MAX_STRIDE}")
        if self.weights is not None:
            self.weights = Path(self.weights)


def architecture_yaml(arch: Architecture) -> dict:
    """The model dictionary of ``arch``, read from the yamls inside the ultralytics package."""
    if arch == "yolov8n-cpu":
        model_yaml = yaml_model_load("yolov8n.yaml")
        # [depth, width, max_channels]: depth 0.17 rounds every C2f to a single bottleneck.
        model_yaml["scales"] = {"n": [0.17, 0.125, 1024]}
        return model_yaml
    return yaml_model_load(f"{arch}.yaml")


def build_detector(config: DetectorConfig) -> DetectionModel:
    """A detection model for ``config``, in train mode, ready for :mod:`detector.losses`.

    ``model.args`` holds Ultralytics' default hyperparameters (the loss gains box 7.5, cls 0.5,
    dfl 1.5 come from there) and ``model.names`` the job's class names.
    """
    source = _load_checkpoint_model(config.weights) if config.weights is not None else None
    model_yaml = deepcopy(source.yaml) if source is not None else architecture_yaml(config.arch)
    model_yaml["nc"] = len(config.class_names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = DetectionModel(model_yaml, nc=len(config.class_names), verbose=False)
    # Names first: DetectionModel.load remaps class-logit rows by name.
    model.names = dict(enumerate(config.class_names))
    if source is not None:
        model.load(source, verbose=False)
    _prepare_for_training(model)
    return model


def save_detector(model: DetectionModel, path: Path) -> Path:
    """Write ``model`` as an Ultralytics checkpoint that ``ultralytics.YOLO(path)`` loads.

    Weights are kept in float32 (Ultralytics writes float16) so that a saved and reloaded
    model continues exactly where it stopped.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot = deepcopy(model).float().cpu()
    snapshot.criterion = None  # training-only state, rebuilt on demand
    checkpoint = {
        "model": snapshot,
        "ema": None,
        "date": datetime.now().astimezone().isoformat(),
        "version": ultralytics_version,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
    }
    torch.save(checkpoint, path)
    return path


def load_detector(path: Path, device: torch.device | str = "cpu") -> DetectionModel:
    """A model saved by :func:`save_detector` or Ultralytics' trainer, ready for training."""
    model = _load_checkpoint_model(Path(path)).to(device)
    _prepare_for_training(model)
    return model


def _load_checkpoint_model(path: Path) -> DetectionModel:
    # Never Ultralytics' own loader: it unpickles with weights_only=False (see detector.checkpoint).
    return read_detector_checkpoint(path).model


def _prepare_for_training(model: DetectionModel) -> None:
    """Train mode, default hyperparameters, and the trainable set Ultralytics' trainer uses."""
    model.args = get_cfg(DEFAULT_CFG)
    model.criterion = None  # built lazily from model.args on the model's device
    model.train()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not any(frozen in name for frozen in FROZEN_PARAMETER_NAMES))
