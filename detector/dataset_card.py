"""The dataset card written beside a rendered dataset: what is in it, at a glance.

``card.json`` (machine-readable), ``card.md`` (the same as tables), ``card_histograms.png``
(class counts, box sizes, and a histogram per numeric ``meta`` key such as
``azimuth_deg`` / ``elevation_deg`` / ``distance``) and ``card_grid.png`` (sample images
with their boxes drawn).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import numpy as np
from jaxtyping import Float, Int
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from ultralytics.utils.plotting import colors

GRID_SAMPLES = 16
TILE_PX = 256
HISTOGRAM_BINS = 10


@dataclass
class CardRecord:
    """What the card needs to know about one written image."""

    image_path: Path
    boxes: Float[Tensor, "N 4"]
    """xyxy pixels."""
    classes: Int[Tensor, "N"]
    meta: dict


def write_dataset_card(out_dir: Path, class_names: list[str], records: list[CardRecord]) -> dict:
    """Write the card files into ``out_dir``; returns the content of ``card.json``."""
    class_counts = {name: 0 for name in class_names}
    for record in records:
        for c in record.classes.tolist():
            class_counts[class_names[c]] += 1
    box_sizes = np.concatenate(
        [((r.boxes[:, 2:] - r.boxes[:, :2]).prod(dim=1).sqrt()).numpy() for r in records] + [np.zeros(0)]
    )
    card = {
        "num_images": len(records),
        "num_boxes": int(sum(class_counts.values())),
        "images_without_boxes": sum(len(r.classes) == 0 for r in records),
        "class_counts": class_counts,
        "box_size_px": _summary(box_sizes),
        "meta": {key: _summary(np.array(values)) for key, values in _numeric_meta(records).items()},
    }
    (out_dir / "card.json").write_text(json.dumps(card, indent=2))
    (out_dir / "card.md").write_text(_markdown(card))
    _plot_histograms(card, out_dir / "card_histograms.png")
    _sample_grid(records, class_names).save(out_dir / "card_grid.png")
    return card


def _numeric_meta(records: list[CardRecord]) -> dict[str, list[float]]:
    """Values of every meta key holding a number or a list of numbers (one per object)."""
    values: dict[str, list[float]] = {}
    for record in records:
        for key, value in record.meta.items():
            items = value if isinstance(value, list) else [value]
            if items and all(isinstance(v, Real) and not isinstance(v, bool) for v in items):
                values.setdefault(key, []).extend(float(v) for v in items)
    return values


def _summary(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"count": 0}
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
    return {
        "count": len(values),
        "min": float(values.min()),
        "median": float(np.median(values)),
        "max": float(values.max()),
        "histogram": {"bin_edges": edges.tolist(), "counts": counts.tolist()},
    }


def _markdown(card: dict) -> str:
    lines = [
        "# Dataset card",
        "",
        f"{card['num_images']} images, {card['num_boxes']} boxes, {card['images_without_boxes']} images without boxes.",
        "",
        "![samples](card_grid.png)",
        "",
        "![histograms](card_histograms.png)",
        "",
        "## Class counts",
        "",
        "| class | boxes |",
        "|---|---|",
        *(f"| {name} | {count} |" for name, count in card["class_counts"].items()),
    ]
    for title, summary in [("Box size (sqrt of area, px)", card["box_size_px"])] + list(card["meta"].items()):
        lines += ["", f"## {title}", ""]
        if not summary["count"]:
            lines.append("no values")
            continue
        lines += [
            f"{summary['count']} values, min {summary['min']:.3g}, median {summary['median']:.3g}, "
            f"max {summary['max']:.3g}",
            "",
            "| from | to | count |",
            "|---|---|---|",
        ]
        edges, counts = summary["histogram"]["bin_edges"], summary["histogram"]["counts"]
        lines += [f"| {lo:.3g} | {hi:.3g} | {n} |" for lo, hi, n in zip(edges[:-1], edges[1:], counts)]
    return "\n".join(lines) + "\n"


def _plot_histograms(card: dict, path: Path) -> None:
    panels = [("box size (sqrt of area, px)", card["box_size_px"])] + list(card["meta"].items())
    figure = Figure(figsize=(4 * (len(panels) + 1), 3), layout="constrained")
    axes = figure.subplots(1, len(panels) + 1)
    axes[0].bar(list(card["class_counts"]), list(card["class_counts"].values()))
    axes[0].set_title("boxes per class")
    axes[0].tick_params(axis="x", labelrotation=45)
    for axis, (title, summary) in zip(axes[1:], panels):
        axis.set_title(title)
        if summary["count"]:
            edges, counts = summary["histogram"]["bin_edges"], summary["histogram"]["counts"]
            axis.stairs(counts, edges, fill=True)
    figure.savefig(path, dpi=80)


def _sample_grid(records: list[CardRecord], class_names: list[str]) -> Image.Image:
    """Up to GRID_SAMPLES images spread over the set, each fitted in a TILE_PX square."""
    chosen = sorted(set(np.linspace(0, len(records) - 1, min(GRID_SAMPLES, len(records))).round().astype(int)))
    columns = math.ceil(math.sqrt(len(chosen)))
    rows = math.ceil(len(chosen) / columns)
    grid = Image.new("RGB", (columns * TILE_PX, rows * TILE_PX), (114, 114, 114))
    font = ImageFont.load_default()
    for slot, index in enumerate(chosen):
        record = records[index]
        with Image.open(record.image_path) as image:
            tile = image.convert("RGB")
        scale = TILE_PX / max(tile.size)
        tile = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))))
        draw = ImageDraw.Draw(tile)
        for box, c in zip((record.boxes * scale).tolist(), record.classes.tolist()):
            draw.rectangle(box, outline=colors(c), width=2)
            draw.text((box[0] + 2, box[1] + 1), class_names[c], fill=colors(c), font=font)
        grid.paste(tile, ((slot % columns) * TILE_PX, (slot // columns) * TILE_PX))
    return grid
