"""Labelled image sets on disk: COCO json and YOLO folders in, both formats (plus a card) out.

Readers validate the whole set up front and raise :class:`DatasetError` naming the file and
the problem: missing image file, unreadable image, box outside the image, unknown category,
duplicate ids, empty set. Every image is decoded once while validating; pixels are read
again only when batches are asked for.

Images are decoded with OpenCV, as Ultralytics' own data loader does (and not with PIL,
whose ``Image.open`` Ultralytics patches to pip-install a HEIF plugin on unknown files).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from jaxtyping import Float, Int
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from ultralytics.data.utils import img2label_paths

from detector.dataset_card import CardRecord, write_dataset_card
from detector.errors import DatasetError
from detector.targets import ImageBatch, pad_boxes

IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}
BOX_TOLERANCE_PX = 1.0
"""How far a box may spill over the image border (annotation rounding) before it is an error;
boxes within the tolerance are clipped to the image."""
LETTERBOX_FILL = 114 / 255
"""Grey of the letterbox padding, as in Ultralytics."""
MAX_IMAGE_PIXELS = 100_000_000
"""Largest image read (width x height; 300 MB of RGB pixels): a 100 MP photo is still read."""
HEADER_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
"""Image formats whose declared size is checked before decoding (IMAGE_SUFFIXES')."""


@dataclass
class LabelledImage:
    """One image file and its boxes."""

    path: Path
    width: int
    height: int
    boxes: Float[Tensor, "N 4"]
    """xyxy pixels of the image file, inside the image."""
    classes: Int[Tensor, "N"]


@dataclass
class LabelledSet:
    """A validated labelled image set, as read by :func:`load_coco` or :func:`load_yolo`."""

    images: list[LabelledImage]
    class_names: list[str]
    source: Path
    """The json file or folder the set was read from."""

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, image_size: int, indices: list[int] | None = None) -> ImageBatch:
        """Images ``indices`` (default: all) letterboxed to ``image_size`` squares, boxes adjusted."""
        chosen = [self.images[i] for i in (range(len(self)) if indices is None else indices)]
        images, boxes = zip(*(letterbox(read_image(item.path), item.boxes, image_size) for item in chosen))
        padded_boxes, classes, keep = pad_boxes(list(boxes), [item.classes for item in chosen])
        return ImageBatch(torch.stack(images), padded_boxes, classes, keep)

    def batches(self, image_size: int, batch_size: int) -> Iterator[ImageBatch]:
        """The whole set in order, ``batch_size`` images at a time."""
        for start in range(0, len(self), batch_size):
            yield self.batch(image_size, list(range(start, min(start + batch_size, len(self)))))


def read_image(path: Path) -> Float[Tensor, "3 H W"]:
    """An image file as RGB floats in [0, 1]."""
    return torch.from_numpy(_decode(path)).permute(2, 0, 1).float() / 255


def _decode(path: Path) -> np.ndarray:
    """H x W x 3 RGB uint8 pixels of an image file (its declared size checked first)."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing image file")
    _check_declared_size(path)
    try:
        bgr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as error:  # OpenCV asserts on some malformed files instead of returning None
        raise DatasetError(f"{path}: unreadable image ({str(error).strip().splitlines()[-1]})") from error
    if bgr is None:
        raise DatasetError(f"{path}: unreadable image (not a decodable image file)")
    return np.ascontiguousarray(bgr[..., ::-1])


def _check_declared_size(path: Path) -> None:
    """Refuse an image whose header declares more than MAX_IMAGE_PIXELS, before decoding it
    (a few bytes of PNG can declare 60000 x 60000). Pillow reads only the header here."""
    try:
        with Image.open(path, formats=HEADER_FORMATS) as image:
            width, height = image.size
    except UnidentifiedImageError:
        return  # not a format read here: OpenCV decides
    except Image.DecompressionBombError as error:  # Pillow's own limit, at twice its MAX_IMAGE_PIXELS
        raise DatasetError(f"{path}: image over the limit of {MAX_IMAGE_PIXELS} pixels ({error})") from error
    except (OSError, SyntaxError, ValueError) as error:  # a truncated or corrupt header
        raise DatasetError(f"{path}: unreadable image header ({error})") from error
    if width * height > MAX_IMAGE_PIXELS:
        raise DatasetError(f"{path}: image of {width}x{height} pixels is over the limit of {MAX_IMAGE_PIXELS} pixels")


def letterbox(
    image: Float[Tensor, "3 H W"], boxes: Float[Tensor, "N 4"], size: int
) -> tuple[Float[Tensor, "3 S S"], Float[Tensor, "N 4"]]:
    """Resize keeping the aspect ratio so the longer side is ``size``, pad the rest with grey
    (centred, as Ultralytics does), and move the xyxy pixel boxes along."""
    height, width = image.shape[-2:]
    scale = size / max(height, width)
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    resized = F.interpolate(image[None], (new_height, new_width), mode="bilinear", antialias=True, align_corners=False)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    canvas = torch.full((3, size, size), LETTERBOX_FILL, dtype=image.dtype)
    canvas[:, top : top + new_height, left : left + new_width] = resized[0].clamp(0, 1)
    gain = torch.tensor([new_width / width, new_height / height] * 2)
    return canvas, boxes * gain + torch.tensor([left, top, left, top], dtype=boxes.dtype)


def load_dataset(path: Path) -> LabelledSet:
    """A COCO json file, or a YOLO folder (one holding ``data.yaml``)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return load_coco(path)
    if path.is_dir() and (path / "data.yaml").is_file():
        return load_yolo(path)
    raise DatasetError(f"{path}: not a COCO .json file nor a YOLO folder with a data.yaml")


def load_coco(json_path: Path, image_dir: Path | None = None) -> LabelledSet:
    """A COCO detection json; ``file_name`` paths are relative to ``image_dir`` (default: the
    json's folder). Crowd annotations (``iscrowd: 1``) are skipped."""
    json_path = Path(json_path)
    image_dir = Path(image_dir) if image_dir is not None else json_path.parent
    try:
        coco = json.loads(json_path.read_text())
    except FileNotFoundError as error:
        raise DatasetError(f"{json_path}: file not found") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{json_path}: not valid JSON ({error})") from error
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco, dict) or not isinstance(coco.get(key), list):
            raise DatasetError(f"{json_path}: no '{key}' list: not a COCO detection file")
    if not coco["images"]:
        raise DatasetError(f"{json_path}: empty set: no images")
    if not coco["annotations"]:
        raise DatasetError(f"{json_path}: empty set: no annotations")
    if not coco["categories"]:
        raise DatasetError(f"{json_path}: no categories")

    categories = sorted(coco["categories"], key=lambda c: _field(c, "id", json_path, "category", (int,)))
    _check_unique([c["id"] for c in categories], json_path, "category id")
    _check_unique([_field(c, "name", json_path, "category", (int, str)) for c in categories], json_path, "category name")
    class_of_category = {c["id"]: index for index, c in enumerate(categories)}
    _check_unique([_field(i, "id", json_path, "image", (int, str)) for i in coco["images"]], json_path, "image id")
    _check_unique([_field(a, "id", json_path, "annotation", (int, str)) for a in coco["annotations"]], json_path, "annotation id")

    annotations_of: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        where = f"{json_path}: annotation {annotation['id']}"
        if _field(annotation, "image_id", json_path, "annotation", (int, str)) not in annotations_of:
            raise DatasetError(f"{where}: unknown image id {annotation['image_id']}")
        if _field(annotation, "category_id", json_path, "annotation", (int, str)) not in class_of_category:
            raise DatasetError(f"{where}: unknown category {annotation['category_id']}")
        if not annotation.get("iscrowd", 0):
            annotations_of[annotation["image_id"]].append(annotation)

    images = []
    for entry in coco["images"]:
        path = image_dir / _field(entry, "file_name", json_path, "image", (str,))
        width, height = _check_image_file(path, json_path)
        if (entry.get("width", width), entry.get("height", height)) != (width, height):
            raise DatasetError(
                f"{json_path}: image {entry['id']} is {entry.get('width')}x{entry.get('height')} in the json "
                f"but {path} is {width}x{height}"
            )
        xywh = [_bbox(a, json_path) for a in annotations_of[entry["id"]]]
        boxes = torch.tensor(xywh, dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        names = [f"{json_path}: annotation {a['id']} (image {path.name})" for a in annotations_of[entry["id"]]]
        classes = [class_of_category[a["category_id"]] for a in annotations_of[entry["id"]]]
        images.append(_labelled_image(path, width, height, boxes, classes, names))
    return LabelledSet(images, [str(c["name"]) for c in categories], json_path)


def load_yolo(directory: Path, split: str = "val") -> LabelledSet:
    """A YOLO folder: ``data.yaml`` with the class ``names`` and the ``split`` entry (a folder
    of images, relative to the yaml's ``path`` or to ``directory``); one ``.txt`` label file
    per image where Ultralytics looks for it (``/images/`` -> ``/labels/``), lines
    ``class cx cy w h`` normalised. An image without a label file has no objects."""
    directory = Path(directory)
    data_yaml = directory / "data.yaml"
    try:
        data = yaml.safe_load(data_yaml.read_text())
    except FileNotFoundError as error:
        raise DatasetError(f"{data_yaml}: file not found (a YOLO folder needs a data.yaml with 'names')") from error
    except yaml.YAMLError as error:
        raise DatasetError(f"{data_yaml}: not valid YAML ({error})") from error
    if not isinstance(data, dict) or not data.get("names"):
        raise DatasetError(f"{data_yaml}: no class 'names'")
    names = data["names"]
    class_names = [str(names[k]) for k in sorted(names)] if isinstance(names, dict) else [str(n) for n in names]
    if not isinstance(data.get(split), str):
        raise DatasetError(f"{data_yaml}: no '{split}' folder entry")
    root = Path(data.get("path") or directory)
    root = root if root.is_absolute() and root.is_dir() else directory
    image_root = root / data[split]
    if not image_root.is_dir():
        raise DatasetError(f"{data_yaml}: '{split}' folder {image_root} does not exist")

    image_paths = sorted(p for p in image_root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not image_paths:
        raise DatasetError(f"{image_root}: empty set: no images")
    label_paths = [Path(p) for p in img2label_paths(image_paths)]
    seen: dict[Path, Path] = {}
    for image_path, label_path in zip(image_paths, label_paths):
        if label_path in seen:
            raise DatasetError(f"{image_path}: duplicate image id: {seen[label_path].name} has the same name")
        seen[label_path] = image_path
    _check_labels_have_images(image_root, set(label_paths))

    images = []
    for image_path, label_path in zip(image_paths, label_paths):
        width, height = _check_image_file(image_path, data_yaml)
        rows = _read_label_file(label_path, len(class_names)) if label_path.is_file() else np.zeros((0, 5))
        boxes = torch.from_numpy(rows[:, 1:]).float() * torch.tensor([width, height, width, height])
        boxes = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], dim=1)
        names = [f"{label_path}: line {line + 1}" for line in range(len(rows))]
        images.append(_labelled_image(image_path, width, height, boxes, rows[:, 0].astype(int).tolist(), names))
    if not any(len(item.boxes) for item in images):
        raise DatasetError(f"{directory}: empty set: no boxes in any label file")
    return LabelledSet(images, class_names, directory)


class DatasetWriter:
    """Streams rendered images to disk in both formats, then writes the dataset card.

    Layout of ``out_dir``: ``images/000000.png``, ``labels/000000.txt`` (YOLO),
    ``annotations.json`` (COCO, ``file_name`` relative to ``out_dir``), ``data.yaml``
    (Ultralytics' trainer: train and val are ``images``), ``card.json``, ``card.md``,
    ``card_grid.png`` and ``card_histograms.png``. Images and YOLO labels are written on
    :meth:`add`; the json, yaml and card on :meth:`close`.
    """

    def __init__(self, out_dir: Path, class_names: list[str]):
        if not class_names:
            raise DatasetError(f"{out_dir}: the dataset writer needs at least one class name")
        self.out_dir = Path(out_dir)
        self.class_names = list(class_names)
        (self.out_dir / "images").mkdir(parents=True, exist_ok=True)
        (self.out_dir / "labels").mkdir(parents=True, exist_ok=True)
        self._coco_images: list[dict] = []
        self._coco_annotations: list[dict] = []
        self._records: list[CardRecord] = []
        self._closed = False

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()

    def add(
        self,
        image: Float[Tensor, "3 H W"],
        boxes_xyxy: Float[Tensor, "N 4"],
        classes: Int[Tensor, "N"],
        meta: dict | None = None,
    ) -> int:
        """Write one image and its boxes; returns the image id. Boxes are clipped to the image
        and those left under a pixel wide or high are dropped (objects leaving the frame).
        ``meta`` (JSON-serialisable, e.g. the pose in ``azimuth_deg``, ``elevation_deg``,
        ``distance``) is kept in the COCO image entry and histogrammed in the card."""
        if self._closed:
            raise DatasetError(f"{self.out_dir}: the dataset writer is closed")
        if image.ndim != 3 or image.shape[0] != 3:
            raise DatasetError(f"{self.out_dir}: image of shape {tuple(image.shape)} is not 3 x H x W")
        classes = classes.detach().cpu().long().reshape(-1)
        boxes = boxes_xyxy.detach().cpu().float().reshape(-1, 4)
        if len(boxes) != len(classes):
            raise DatasetError(f"{self.out_dir}: {len(boxes)} boxes but {len(classes)} classes")
        if len(classes) and (classes.min() < 0 or classes.max() >= len(self.class_names)):
            raise DatasetError(f"{self.out_dir}: class ids {classes.tolist()} outside 0..{len(self.class_names) - 1}")
        try:
            meta_text = json.dumps(meta or {})
        except TypeError as error:
            raise DatasetError(f"{self.out_dir}: meta is not JSON-serialisable ({error})") from error

        height, width = image.shape[-2:]
        boxes = boxes.clamp(min=0).minimum(torch.tensor([width, height, width, height], dtype=torch.float32))
        visible = ((boxes[:, 2:] - boxes[:, :2]) >= 1).all(dim=1)
        boxes, classes = boxes[visible], classes[visible]

        image_id = len(self._coco_images)
        file_name = f"images/{image_id:06d}.png"
        pixels = (image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        Image.fromarray(pixels).save(self.out_dir / file_name)
        centres, sizes = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
        normalised = torch.cat([centres, sizes], dim=1) / torch.tensor([width, height, width, height])
        lines = [
            f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, (x, y, w, h) in zip(classes.tolist(), normalised.tolist())
        ]
        (self.out_dir / "labels" / f"{image_id:06d}.txt").write_text("".join(lines))

        self._coco_images.append(
            {"id": image_id, "file_name": file_name, "width": width, "height": height, "meta": json.loads(meta_text)}
        )
        for c, (x0, y0, x1, y1) in zip(classes.tolist(), boxes.tolist()):
            self._coco_annotations.append(
                {
                    "id": len(self._coco_annotations) + 1,  # pycocotools treats annotation id 0 as "unmatched"
                    "image_id": image_id,
                    "category_id": c,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
        self._records.append(CardRecord(self.out_dir / file_name, boxes, classes, meta or {}))
        return image_id

    def close(self) -> None:
        """Write ``annotations.json``, ``data.yaml`` and the dataset card."""
        if self._closed:
            return
        if not self._coco_images:
            raise DatasetError(f"{self.out_dir}: empty set: no images were added")
        self._closed = True
        categories = [{"id": i, "name": name} for i, name in enumerate(self.class_names)]
        coco = {"images": self._coco_images, "annotations": self._coco_annotations, "categories": categories}
        (self.out_dir / "annotations.json").write_text(json.dumps(coco))
        # No "path": Ultralytics then resolves the folders from data.yaml's own location, so the
        # dataset still trains after its folder is moved (a job's output is renamed into place).
        data = {"train": "images", "val": "images"}
        data["names"] = dict(enumerate(self.class_names))
        (self.out_dir / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        write_dataset_card(self.out_dir, self.class_names, self._records)


def _field(entry: dict, key: str, json_path: Path, kind: str, types: tuple[type, ...] = (object,)):
    """``entry[key]``, which must be one of ``types`` (a bool is not an int here)."""
    a = "an" if kind[0] in "aeiou" else "a"
    if not isinstance(entry, dict) or key not in entry:
        raise DatasetError(f"{json_path}: {a} {kind} entry has no '{key}': {str(entry)[:200]}")
    value = entry[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types and object not in types):
        raise DatasetError(f"{json_path}: {a} {kind} entry's '{key}' is {str(value)[:100]}, not "
                           f"{' or '.join(t.__name__ for t in types)}: {str(entry)[:200]}")
    return value


def _bbox(annotation: dict, json_path: Path) -> list[float]:
    """An annotation's ``[x, y, width, height]``: four finite numbers."""
    box = _field(annotation, "bbox", json_path, "annotation", (list,))
    if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                for v in box):
        raise DatasetError(f"{json_path}: annotation {annotation['id']}: bbox {str(box)[:100]} is not "
                           "[x, y, width, height] (four finite numbers)")
    return [float(v) for v in box]


def _check_unique(values: list, json_path: Path, what: str) -> None:
    seen = set()
    for value in values:
        if value in seen:
            raise DatasetError(f"{json_path}: duplicate {what} {value!r}")
        seen.add(value)


def _check_image_file(path: Path, listed_in: Path) -> tuple[int, int]:
    """(width, height) of an image file that exists and decodes."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing image file (listed in {listed_in})")
    height, width = _decode(path).shape[:2]
    return width, height


def _labelled_image(
    path: Path, width: int, height: int, boxes: Tensor, classes: list[int], names: list[str]
) -> LabelledImage:
    """Check every box against the image; clip those spilling over by the tolerance only."""
    size = torch.tensor([width, height, width, height], dtype=torch.float32)
    for box, name in zip(boxes, names):
        if not (box[2:] > box[:2]).all():
            raise DatasetError(f"{name}: empty box {box.tolist()}")
        if (box < -BOX_TOLERANCE_PX).any() or (box > size + BOX_TOLERANCE_PX).any():
            raise DatasetError(f"{name}: box {[round(v, 1) for v in box.tolist()]} outside the {width}x{height} image")
    return LabelledImage(path, width, height, boxes.clamp(min=0).minimum(size), torch.tensor(classes, dtype=torch.long))


def _read_label_file(path: Path, num_classes: int) -> np.ndarray:
    """Rows (class, cx, cy, w, h) of a YOLO label file."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if len(values) != 5 or not values[0].is_integer():
            raise DatasetError(f"{path}: line {number}: expected 'class cx cy w h', got {line.strip()!r}")
        if not 0 <= values[0] < num_classes:
            raise DatasetError(f"{path}: line {number}: unknown category {int(values[0])} ({num_classes} classes)")
        rows.append(values)
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def _check_labels_have_images(image_root: Path, label_paths: set[Path]) -> None:
    """Every label file next to the images belongs to an image."""
    label_root = Path(img2label_paths([image_root / "image.png"])[0]).parent
    if label_root == image_root or not label_root.is_dir():
        return
    for label_path in sorted(label_root.rglob("*.txt")):
        if label_path not in label_paths and label_path.name != "classes.txt":
            raise DatasetError(f"{label_path}: missing image file: no image named {label_path.stem}.* in {image_root}")
