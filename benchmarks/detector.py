"""Detector benchmark: what the optimiser's detector calls cost, beside Ultralytics' own trainer.

At each image size (64 and 128 px), on one batch of random images with random boxes:

- train step: one ``finetune`` step (forward, per-image loss, backward, SGD), as images/s;
- image gradient: d(loss)/d(images), one forward and one backward;
- mixed gradient: ``image_gradient_of_dot``, d/d(images) [v . d(loss)/d(theta)] (double backward);
- HVP: ``hessian_vector_product`` (double backward);
- Ultralytics step: one batch of ``DetectionTrainer`` on the same number of images written to
  disk (data loading and augmentation included, nbs = batch so every batch is an optimiser
  step), the median of the intervals between ``on_train_batch_end`` events.

Every time is a median over repeats after a warm-up; ratios are against the Ultralytics
step measured in the same run. The last line is ``hvp_over_train_step=<x>``: HVP time over
one Ultralytics trainer step at the largest size.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detector.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script, this file's folder leads sys.path and the file's own name would shadow the
# detector package: put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402  (after the environment above)

from detector.datasets import DatasetWriter  # noqa: E402
from detector.losses import (  # noqa: E402
    BatchNormMode,
    detection_loss,
    hessian_vector_product,
    image_gradient_of_dot,
    trainable_parameters,
)
from detector.model import DetectorConfig, build_detector  # noqa: E402
from detector.targets import ImageBatch, targets_from_boxes  # noqa: E402
from detector.train import finetune, train_on_dataset  # noqa: E402

CLASS_NAMES = ["a", "b", "c"]


def random_batch(count: int, size: int, generator: torch.Generator) -> ImageBatch:
    """Noise images with 1-3 random boxes of 10-50 % of the side each."""
    slots = 3
    corners = torch.rand(count, slots, 2, generator=generator) * size * 0.5
    sides = (0.1 + 0.4 * torch.rand(count, slots, 2, generator=generator)) * size
    return ImageBatch(
        images=torch.rand(count, 3, size, size, generator=generator),
        boxes=torch.cat([corners, corners + sides], dim=-1),
        classes=torch.randint(0, len(CLASS_NAMES), (count, slots), generator=generator),
        keep=torch.arange(slots)[None, :] < torch.randint(1, slots + 1, (count, 1), generator=generator),
    )


def median_seconds(function: Callable[[], object], repeats: int, device: torch.device) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        function()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ultralytics_step_seconds(batch: ImageBatch, config: DetectorConfig, batches: int, work_dir: Path) -> float:
    """Median interval between consecutive batches of Ultralytics' trainer (first interval skipped)."""
    data_dir = work_dir / f"data_{batch.image_size}"
    images = batch.images.repeat(batches, 1, 1, 1)
    with DatasetWriter(data_dir, CLASS_NAMES) as writer:
        for i in range(len(images)):
            row = i % len(batch.images)
            keep = batch.keep[row]
            writer.add(images[i], batch.boxes[row][keep], batch.classes[row][keep])
    ends = []
    train_on_dataset(
        config,
        data_dir,
        epochs=1,
        image_size=batch.image_size,
        out_dir=work_dir / f"run_{batch.image_size}",
        progress=False,
        batch_size=len(batch.images),
        callbacks={"on_train_batch_end": [lambda trainer: ends.append(time.perf_counter())]},
        nbs=len(batch.images),
        val=False,
        plots=False,
        warmup_epochs=0,
    )
    intervals = [b - a for a, b in zip(ends[1:], ends[2:])]
    return statistics.median(intervals)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller batch (< 2 min on CPU)")
    parser.add_argument("--arch", default="yolov8n", choices=["yolov8n", "yolo11n", "yolov8n-cpu"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 with --quick, else 16")
    args = parser.parse_args()
    batch_size = args.batch_size or (8 if args.quick else 16)
    repeats, trainer_batches = (3, 5) if args.quick else (10, 12)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device={name} arch={args.arch} batch={batch_size} repeats={repeats}")

    generator = torch.Generator().manual_seed(0)
    hvp_over_ultralytics = float("nan")
    with tempfile.TemporaryDirectory() as work_dir:
        for size in args.sizes:
            config = DetectorConfig(arch=args.arch, class_names=CLASS_NAMES, image_size=size)
            batch = random_batch(batch_size, size, generator)
            model = build_detector(config).to(device)
            images = batch.images.to(device)
            targets = {k: v.to(device) for k, v in batch.targets().items()}
            vector = [torch.randn(p.shape, generator=generator).to(device) for p in trainable_parameters(model)]
            mode = BatchNormMode.BATCH

            def image_gradient() -> torch.Tensor:
                with_grad = images.clone().requires_grad_(True)
                return torch.autograd.grad(detection_loss(model, with_grad, targets, mode), with_grad)[0]

            timings = {
                "train_step": median_seconds(
                    lambda: finetune(model, images, targets, 1, 1e-3, BatchNormMode.UPDATE, progress=False),
                    repeats,
                    device,
                ),
                "image_grad": median_seconds(image_gradient, repeats, device),
                "mixed_grad": median_seconds(
                    lambda: image_gradient_of_dot(model, images, targets, vector, mode), repeats, device
                ),
                "hvp": median_seconds(
                    lambda: hessian_vector_product(model, images, targets, vector, mode), repeats, device
                ),
            }
            ultralytics = ultralytics_step_seconds(batch, config, trainer_batches, Path(work_dir))
            print(
                f"size={size} ultralytics_step_s={ultralytics:.4f} "
                f"ultralytics_images_per_s={batch_size / ultralytics:.1f} "
                f"train_step_images_per_s={batch_size / timings['train_step']:.1f}"
            )
            for key, seconds in timings.items():
                print(f"size={size} {key}_s={seconds:.4f} {key}_over_ultralytics_step={seconds / ultralytics:.2f}")
            hvp_over_ultralytics = timings["hvp"] / ultralytics
    print(f"hvp_over_train_step={hvp_over_ultralytics:.2f}")


if __name__ == "__main__":
    main()
