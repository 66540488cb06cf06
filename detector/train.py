"""Training: fine-tuning on in-memory batches (the inner loop of the optimiser), and full
training on a dataset on disk through Ultralytics' own trainer (the final detector)."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from matplotlib import font_manager
from torch import Tensor
from tqdm import tqdm
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import LOGGER, RANK, USER_CONFIG_DIR
from ultralytics.utils.torch_utils import init_seeds

from detector.errors import DetectorError
from detector.losses import BatchNormMode, detection_loss, trainable_parameters
from detector.model import DetectorConfig, build_detector, save_detector
from detector.process_state import restored_process_state
from detector.targets import UltralyticsTargets, select_targets

MAX_GRADIENT_NORM = 10.0
"""Gradient-norm clip of Ultralytics' trainer."""

FILE_ARGUMENTS = ("model", "data", "project", "name", "save_dir", "cfg", "pretrained", "resume", "source", "tracker")
"""Ultralytics train arguments that name files or folders: Ultralytics' trainer unpickles the
checkpoints it is pointed at (``weights_only=False``) and writes where it is told, so these
are set by :func:`train_on_dataset` alone (``pretrained`` and ``resume`` may be booleans, but
``resume=True`` reads the newest run of the whole machine, so only False)."""


@dataclass
class FinetuneState:
    """What :func:`finetune` needs to continue where it stopped (the weights live in the model:
    checkpoint them with :func:`detector.model.save_detector`)."""

    optimizer: dict
    """The torch optimiser's ``state_dict()`` (momentum / moment buffers)."""
    steps_done: int = 0
    losses: list[float] = field(default_factory=list)
    """Mean training loss of every step so far."""


def finetune(
    model: DetectionModel,
    images: Float[Tensor, "N 3 S S"],
    targets: UltralyticsTargets,
    steps: int,
    lr: float,
    bn_mode: BatchNormMode,
    *,
    batch_size: int | None = None,
    optimizer_name: Literal["sgd", "adamw"] = "sgd",
    momentum: float = 0.937,
    weight_decay: float = 5e-4,
    generator: torch.Generator | None = None,
    optimizer_state: FinetuneState | None = None,
    progress: bool = True,
) -> FinetuneState:
    """``steps`` optimiser steps on the mean detection loss, gradients clipped to norm 10.

    ``optimizer_name``: "sgd" (Nesterov momentum, Ultralytics' defaults; lr ~0.01) or
    "adamw" (beta1 = ``momentum``; lr ~0.002-0.005, converges faster on small sets), the two
    Ultralytics chooses between. Weight decay applies to weights, not to biases and
    BatchNorm scales, as in Ultralytics. Each step uses all N images, or ``batch_size`` of
    them drawn without replacement with ``generator``. ``bn_mode`` is normally
    ``BatchNormMode.UPDATE`` (plain training). Pass the returned state back as
    ``optimizer_state`` (same ``optimizer_name``) to warm-start the next call.
    """
    if steps < 0 or lr <= 0:
        raise DetectorError(f"finetune needs steps >= 0 and lr > 0, got steps={steps}, lr={lr}")
    if optimizer_name not in ("sgd", "adamw"):
        raise DetectorError(f"unknown optimizer {optimizer_name!r}: use 'sgd' or 'adamw'")
    parameters = trainable_parameters(model)
    groups = [
        {"params": [p for p in parameters if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in parameters if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    previous = optimizer_state or FinetuneState(optimizer={})
    if previous.optimizer:
        optimizer.load_state_dict(previous.optimizer)
        for group in optimizer.param_groups:
            group["lr"] = lr
    losses = list(previous.losses)
    count = images.shape[0]
    bar = tqdm(range(steps), desc="finetune", unit="step", disable=not progress, leave=False)
    for _ in bar:
        if batch_size is None or batch_size >= count:
            step_images, step_targets = images, targets
        else:
            chosen = torch.randperm(count, generator=generator)[:batch_size]
            step_images, step_targets = images[chosen.to(images.device)], select_targets(targets, chosen)
        loss = detection_loss(model, step_images, step_targets, bn_mode)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, MAX_GRADIENT_NORM)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return FinetuneState(optimizer.state_dict(), previous.steps_done + steps, losses)


def train_on_dataset(
    model_or_config: DetectionModel | DetectorConfig,
    data_dir: Path,
    epochs: int,
    image_size: int,
    out_dir: Path,
    progress: bool = True,
    batch_size: int = 16,
    device: str | None = None,
    amp: bool = False,
    seed: int = 0,
    callbacks: dict[str, list[Callable[[DetectionTrainer], None]]] | None = None,
    **trainer_overrides,
) -> Path:
    """Train with Ultralytics' ``DetectionTrainer`` on a YOLO dataset; returns the best
    checkpoint (``out_dir/train/weights/best.pt``, loadable by ``ultralytics.YOLO``).

    ``data_dir`` holds a ``data.yaml`` (as :class:`detector.datasets.DatasetWriter` writes).
    Offline: third-party logging integrations are dropped, the font Ultralytics fetches is
    provided from matplotlib's, and ``amp`` stays False unless asked for, since Ultralytics'
    AMP self-check on CUDA downloads ``yolo26n.pt``. ``callbacks`` maps Ultralytics events
    (e.g. ``on_train_batch_end``, ``on_fit_epoch_end``) to functions of the trainer, e.g. to
    report progress. ``trainer_overrides`` are further Ultralytics train arguments (e.g.
    ``mosaic=0.0``, ``plots=False``); none may name a file (:data:`FILE_ARGUMENTS`).
    The same inputs give the same weights whatever ran before in the process, and the process
    state Ultralytics changes is put back (:func:`detector.process_state.restored_process_state`).
    """
    named = sorted(k for k, v in trainer_overrides.items() if k in FILE_ARGUMENTS
                   and not (k == "pretrained" and isinstance(v, bool)) and not (k == "resume" and v is False))
    if named:
        raise DetectorError(f"trainer arguments {named} name files or folders: train_on_dataset sets those itself")
    data_yaml = Path(data_dir) / "data.yaml"
    if not data_yaml.is_file():
        raise DetectorError(f"{data_yaml}: file not found (train_on_dataset needs a YOLO dataset folder)")
    out_dir = Path(out_dir).resolve()
    model = build_detector(model_or_config) if isinstance(model_or_config, DetectorConfig) else model_or_config
    initial = save_detector(model, out_dir / "initial.pt")
    provide_offline_fonts()
    if device is None:
        device = "0" if torch.cuda.is_available() else "cpu"
    arguments = {
        "model": str(initial),
        "data": str(data_yaml),
        "epochs": epochs,
        "imgsz": image_size,
        "batch": batch_size,
        "device": device,
        "workers": 0 if device == "cpu" else 8,  # worker processes only slow a CPU run down
        "amp": amp,
        "seed": seed,
        "project": str(out_dir),
        "name": "train",
        "exist_ok": True,
        "verbose": progress,
        **trainer_overrides,
    }
    # Ultralytics changes the process for good (threads, random streams): everything after a
    # final training (the next run, its warm-up cache key) would change.
    with restored_process_state(), _ultralytics_logging(progress):
        trainer = _LocalDetectionTrainer(overrides=arguments)
        for event, functions in (callbacks or {}).items():
            for function in functions:
                trainer.add_callback(event, function)
        trainer.train()
    return Path(trainer.best) if Path(trainer.best).is_file() else Path(trainer.last)


class _LocalDetectionTrainer(DetectionTrainer):
    """Ultralytics' DetectionTrainer without the integration callbacks it installs from the
    user's settings (Comet, MLflow, ClearML, Ultralytics Platform, usage analytics): nothing
    leaves the machine, and a missing API key does not log errors."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Seeded again: the base class seeds before it imports the integrations, and the first
        # import in a process draws from `random` (comet_ml's error-tracking sampling, rich), so
        # a process's first training took other augmentations than every later one.
        init_seeds(self.args.seed + 1 + RANK, deterministic=self.args.deterministic)
        # The validator copies these, so drop the integrations here too.
        self.callbacks = defaultdict(
            list, {event: [c for c in found if _is_local(c)] for event, found in self.callbacks.items()}
        )

    def run_callbacks(self, event: str) -> None:
        for callback in self.callbacks.get(event, []):
            if _is_local(callback):
                callback(self)


def _is_local(callback) -> bool:
    """Ultralytics' own no-op defaults, or callbacks added by the caller."""
    module = getattr(callback, "__module__", "") or ""
    return not module.startswith("ultralytics.") or module == "ultralytics.utils.callbacks.base"


def provide_offline_fonts() -> None:
    """Put matplotlib's DejaVu Sans where Ultralytics looks for Arial, so it does not download it."""
    source = Path(font_manager.findfont("DejaVu Sans"))
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = USER_CONFIG_DIR / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


@contextlib.contextmanager
def _ultralytics_logging(progress: bool) -> Iterator[None]:
    """Ultralytics' progress bars and logs show only while its logger is at INFO."""
    level = LOGGER.level
    LOGGER.setLevel(logging.INFO if progress else logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)
