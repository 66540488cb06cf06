"""What a loop leaves for people: sample images with their boxes, the report JSON and its plots.

Plots (PNG, matplotlib's Agg backend, under ``out_dir/plots/``):

- ``psi_azimuth.png``: the azimuth bin probabilities of every class after each outer iteration
  (a heat map per class: iterations down, bins across);
- ``val_loss.png``: the validation loss (and the last inner training loss) per iteration;
- ``map.png``: the validation mAP50-95 per iteration, and the final detector's test and
  validation mAP50-95 as horizontal lines;
- ``psi_before_after.png``: each learned part of psi at the start and at the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from jaxtyping import Bool, Float, Int  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from torch import Tensor  # noqa: E402

BOX_COLOURS = [(255, 56, 56), (56, 255, 56), (56, 120, 255), (255, 210, 0), (255, 0, 220), (0, 220, 255), (255, 140, 0)]
SAMPLE_MIN_SIDE = 256
"""Sample images are enlarged (nearest neighbour) to at least this side so boxes stay legible."""


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2))
    os.replace(temporary, path)
    return path


def save_sample_images(
    images: Float[Tensor, "N 3 H W"],
    boxes: Float[Tensor, "N M 4"],
    classes: Int[Tensor, "N M"],
    keep: Bool[Tensor, "N M"],
    class_names: list[str],
    paths: list[Path],
) -> list[Path]:
    """Write ``images[i]`` to ``paths[i]`` as PNG with its kept boxes and class names drawn."""
    written = []
    for image, image_boxes, image_classes, image_keep, path in zip(images, boxes, classes, keep, paths):
        pixels = (image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        side = pixels.shape[0]
        zoom = max(1, -(-SAMPLE_MIN_SIDE // side))
        canvas = Image.fromarray(pixels).resize((pixels.shape[1] * zoom, side * zoom), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(canvas)
        for box, class_id in zip(image_boxes[image_keep].tolist(), image_classes[image_keep].tolist()):
            colour = BOX_COLOURS[class_id % len(BOX_COLOURS)]
            x0, y0, x1, y1 = (v * zoom for v in box)
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
            draw.text((x0 + 3, y0 + 2), class_names[class_id], fill=colour)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        canvas.save(path)
        written.append(Path(path))
    return written


def plot_history(history: list[dict], class_names: list[str], final: dict, out_dir: Path) -> list[Path]:
    """The three plots of the module docstring, from the loop's history records; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not history:
        return []
    iterations = [record["iteration"] for record in history]
    paths = []

    probs = np.array([record["psi"]["azimuth"]["probs"] for record in history])  # [T, C, K]
    classes = probs.shape[1]
    figure, axes = plt.subplots(1, classes, figsize=(3 * classes + 1, 3.2), squeeze=False, layout="constrained")
    for c, axis in enumerate(axes[0]):
        shown = axis.imshow(probs[:, c], aspect="auto", cmap="viridis", vmin=0, vmax=max(0.5, float(probs.max())),
                            extent=(0, 360, iterations[-1] + 0.5, iterations[0] - 0.5))
        axis.set_title(class_names[c] if c < len(class_names) else f"class {c}", fontsize=9)
        axis.set_xlabel("azimuth (deg)")
        axis.set_ylabel("outer iteration")
    figure.colorbar(shown, ax=axes[0].tolist(), label="bin probability")
    paths.append(out_dir / "psi_azimuth.png")
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(5, 3.2))
    axis.plot(iterations, [record["val_loss"] for record in history], marker="o", label="validation loss")
    train_loss = [np.nan if record["train_loss"] is None else record["train_loss"] for record in history]
    axis.plot(iterations, train_loss, marker=".", label="training loss (last inner step)")
    axis.set_xlabel("outer iteration")
    axis.set_ylabel("detection loss")
    axis.legend()
    figure.tight_layout()
    paths.append(out_dir / "val_loss.png")
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(5, 3.2))
    measured = [(record["iteration"], record["val_map50_95"]) for record in history if record.get("val_map50_95") is not None]
    if measured:
        axis.plot(*zip(*measured), marker="o", label="validation mAP50-95 (loop detector)")
    for name, style in (("test", "-"), ("val", "--")):
        value = final.get(name, {}).get("map50_95")
        if value is not None:
            axis.axhline(value, linestyle=style, color="k", label=f"final detector, {name} mAP50-95")
    axis.set_xlabel("outer iteration")
    axis.set_ylabel("mAP50-95")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    figure.tight_layout()
    paths.append(out_dir / "map.png")
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)
    return paths


def sample_paths(out_dir: Path, iteration: int, count: int) -> list[Path]:
    """Where the sample images of an outer iteration go."""
    return [Path(out_dir) / "samples" / f"iter{iteration:04d}_{i}.png" for i in range(count)]


def plot_psi_before_after(before_after: dict[str, dict], out_dir: Path) -> list[Path]:
    """``psi_before_after.png``: a panel per learned part (the report's ``psi_before_after``),
    its values at the start and at the end side by side: bin, class, background and count
    probabilities (the azimuth's averaged over classes), or each class's median distance and
    elevation, mean exposure and median colour gains. Returns [] when no part was learned."""
    if not before_after:
        return []
    figure, axes = plt.subplots(1, len(before_after), figsize=(3.6 * len(before_after), 3), squeeze=False,
                                layout="constrained")
    for axis, (part, entry) in zip(axes[0], before_after.items()):
        values = [_part_values(entry[moment]) for moment in ("before", "after")]
        positions = np.arange(len(values[0]))
        for offset, (label, row) in zip((-0.2, 0.2), zip(("start", "end"), values)):
            axis.bar(positions + offset, row, width=0.4, label=label)
        axis.set_title(part, fontsize=9)
        axis.set_xticks(positions)
    axes[0][0].legend(fontsize=7)
    path = Path(out_dir) / "psi_before_after.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return [path]


def _part_values(entry: Any) -> np.ndarray:
    """One row of numbers for a Psi.snapshot() entry (see plot_psi_before_after)."""
    if isinstance(entry, dict):
        key = next(k for k in ("probs", "median", "mean") if k in entry)
        values = np.asarray(entry[key], dtype=float)
        return values.mean(0) if key == "probs" and values.ndim == 2 else values.reshape(-1)
    if entry and isinstance(entry[0], list):  # appearance: one ragged row per class
        return np.asarray(entry[0], dtype=float)
    return np.asarray(entry, dtype=float)
