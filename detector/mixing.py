"""Training folders that hold labelled real photos: beside a rendered dataset (synthetic + real)
or alone (the real-only baseline), in the YOLO layout Ultralytics' trainer reads.

The photos are copied as they are (their own size and format: Ultralytics letterboxes every
image to ``imgsz`` and applies its augmentations to both kinds alike) with YOLO labels written
from their boxes. A photo repeated ``k`` times is ``k`` files (hard links where the file
system allows, copies otherwise), since Ultralytics builds an epoch from the files it finds:
each repeat is one more draw per epoch, with its own augmentation.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from detector.datasets import IMAGE_SUFFIXES, LabelledSet
from detector.errors import DatasetError

REAL_FOLDER = "real"
"""Where a training folder keeps its photos: ``real/images`` and ``real/labels``."""


@dataclass
class TrainingMix:
    """A training folder and what one epoch of it holds."""

    data_dir: Path
    """The folder with the ``data.yaml`` to train on."""
    synthetic_images: int
    real_photos: int
    """Distinct labelled photos."""
    repeats: int
    """Files per photo, i.e. how often each photo is drawn per epoch (0: no photos)."""

    @property
    def images_per_epoch(self) -> int:
        return self.synthetic_images + self.real_photos * self.repeats

    def summary(self) -> dict:
        """JSON-able numbers for a report (not the folder: reports hold no server paths)."""
        data = {name: value for name, value in asdict(self).items() if name != "data_dir"}
        data["images_per_epoch"] = self.images_per_epoch
        data["real_share"] = round(self.real_photos * self.repeats / max(1, self.images_per_epoch), 4)
        return data


def real_repeats(synthetic: int, photos: int, share: float) -> int:
    """How many times each of ``photos`` appears in an epoch beside ``synthetic`` images so that
    the photos make up about ``share`` of it: ``share / (1 - share) * synthetic / photos``
    rounded, and at least once (photos are never left out to keep the share)."""
    if not 0 <= share < 1:
        raise DatasetError(f"the share of real photos must be in [0, 1), got {share}")
    if share == 0 or photos == 0:
        return 0
    return max(1, round(share / (1 - share) * synthetic / photos))


def write_training_mix(synthetic_dir: Path, photos: LabelledSet, out_dir: Path, share: float) -> TrainingMix:
    """``out_dir/data.yaml`` training on the rendered dataset ``synthetic_dir`` (a
    :class:`detector.datasets.DatasetWriter` folder, left untouched) plus ``photos`` repeated
    to make up ``share`` of each epoch (:func:`real_repeats`). ``photos`` must carry the
    dataset's class names in its order (remap them first). Validation stays on the rendered
    images, as for a dataset alone."""
    synthetic_dir = Path(synthetic_dir)
    names = _class_names(synthetic_dir)
    if photos.class_names != names:
        raise DatasetError(f"{photos.source}: classes {photos.class_names} differ from the dataset's {names}")
    synthetic = sum(1 for p in (synthetic_dir / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    repeats = real_repeats(synthetic, len(photos), share)
    out_dir = _fresh(out_dir)
    write_photos(photos, out_dir / REAL_FOLDER, repeats)
    rendered = os.path.relpath(synthetic_dir / "images", out_dir)
    # Relative paths (Ultralytics resolves them from data.yaml's folder): the run folder may move.
    _write_yaml(out_dir, [rendered, f"{REAL_FOLDER}/images"] if repeats else rendered, rendered, names)
    return TrainingMix(out_dir, synthetic, len(photos), repeats)


def write_real_only(photos: LabelledSet, out_dir: Path, images_per_epoch: int) -> TrainingMix:
    """``out_dir/data.yaml`` training on ``photos`` alone, each repeated so that an epoch holds
    about ``images_per_epoch`` images (as many optimiser steps as a mix of that size)."""
    repeats = max(1, round(images_per_epoch / len(photos)))
    out_dir = _fresh(out_dir)
    write_photos(photos, out_dir / REAL_FOLDER, repeats)
    _write_yaml(out_dir, f"{REAL_FOLDER}/images", f"{REAL_FOLDER}/images", photos.class_names)
    return TrainingMix(out_dir, 0, len(photos), repeats)


def write_photos(photos: LabelledSet, out_dir: Path, repeats: int) -> list[Path]:
    """Each photo ``repeats`` times as ``out_dir/images/<index>_<copy><suffix>`` with its YOLO
    label ``out_dir/labels/<index>_<copy>.txt`` (``class cx cy w h``, normalised); returns the
    image files written."""
    images, labels = Path(out_dir) / "images", Path(out_dir) / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    written = []
    for index, photo in enumerate(photos.images):
        boxes = photo.boxes.tolist()
        lines = "".join(
            f"{c} {(x0 + x1) / 2 / photo.width:.6f} {(y0 + y1) / 2 / photo.height:.6f} "
            f"{(x1 - x0) / photo.width:.6f} {(y1 - y0) / photo.height:.6f}\n"
            for c, (x0, y0, x1, y1) in zip(photo.classes.tolist(), boxes)
        )
        for copy in range(repeats):
            target = images / f"{index:06d}_{copy}{photo.path.suffix.lower()}"
            if copy == 0:
                # A copy, not a link to the user's file: Ultralytics rewrites a corrupt JPEG in place.
                shutil.copyfile(photo.path, target)
            else:
                _link_or_copy(written[-1], target)
            (labels / f"{target.stem}.txt").write_text(lines)
            written.append(target)
    return written


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link to ``source`` (repeats cost no space), or a copy where links fail."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _fresh(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    return out_dir


def _class_names(dataset_dir: Path) -> list[str]:
    data = yaml.safe_load((dataset_dir / "data.yaml").read_text())
    names = data["names"]
    return [str(names[k]) for k in sorted(names)] if isinstance(names, dict) else [str(n) for n in names]


def _write_yaml(out_dir: Path, train: str | list[str], val: str, names: list[str]) -> None:
    data = {"train": train, "val": val, "names": dict(enumerate(names))}
    (out_dir / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
