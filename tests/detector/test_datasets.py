import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from ultralytics.data.utils import check_det_dataset

from detector.datasets import (
    LETTERBOX_FILL,
    DatasetError,
    DatasetWriter,
    load_coco,
    load_dataset,
    load_yolo,
    read_image,
)


def _write_png(path: Path, width: int, height: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def coco_set(tmp_path) -> Path:
    """Two images (48x32 and 32x32), three boxes (one crowd), categories listed out of id order."""
    _write_png(tmp_path / "pictures" / "a.png", 48, 32)
    _write_png(tmp_path / "pictures" / "b.png", 32, 32, seed=1)
    coco = {
        "images": [
            {"id": 1, "file_name": "pictures/a.png", "width": 48, "height": 32},
            {"id": 2, "file_name": "pictures/b.png", "width": 32, "height": 32},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [6, 4, 12, 8], "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 32, 16]},
            {"id": 3, "image_id": 2, "category_id": 5, "bbox": [1, 1, 4, 4], "iscrowd": 1},
        ],
        "categories": [{"id": 5, "name": "can"}, {"id": 3, "name": "mug"}],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture
def yolo_set(tmp_path) -> Path:
    """Two images in images/val: one with a box, one without a label file."""
    root = tmp_path / "yolo"
    _write_png(root / "images" / "val" / "a.png", 48, 32)
    _write_png(root / "images" / "val" / "b.png", 32, 32, seed=1)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "val" / "a.txt").write_text("1 0.25 0.25 0.25 0.25\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "val": "images/val", "names": {0: "mug", 1: "can"}}))
    return root


def _edit_json(path: Path, edit) -> None:
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))


def test_coco_set_reads_boxes_classes_in_category_id_order(coco_set):
    dataset = load_coco(coco_set)

    assert dataset.class_names == ["mug", "can"]  # category ids 3, 5
    assert [item.path.name for item in dataset.images] == ["a.png", "b.png"]
    assert dataset.images[0].boxes.tolist() == [[6, 4, 18, 12]]
    assert dataset.images[0].classes.tolist() == [1]
    assert dataset.images[1].classes.tolist() == [0]  # the crowd box is skipped


def test_yolo_set_reads_normalised_boxes_and_unlabelled_images(yolo_set):
    dataset = load_yolo(yolo_set)

    assert dataset.class_names == ["mug", "can"]
    assert dataset.images[0].boxes.tolist() == [[6, 4, 18, 12]]
    assert dataset.images[0].classes.tolist() == [1]
    assert len(dataset.images[1].boxes) == 0


def test_load_dataset_picks_the_format(coco_set, yolo_set):
    assert load_dataset(coco_set).source == coco_set
    assert load_dataset(yolo_set).source == yolo_set
    with pytest.raises(DatasetError, match="not a COCO .json file nor a YOLO folder"):
        load_dataset(coco_set.parent / "pictures")


def test_batches_are_letterboxed_with_boxes_moved_along(coco_set):
    batch = load_coco(coco_set).batch(image_size=64)

    assert batch.images.shape == (2, 3, 64, 64)
    # 48x32 -> 64x43 (scale 4/3), centred: 10 grey rows above, 11 below.
    assert torch.allclose(batch.images[0, :, :10], torch.tensor(LETTERBOX_FILL))
    assert torch.allclose(batch.images[0, :, -11:], torch.tensor(LETTERBOX_FILL))
    assert not torch.allclose(batch.images[0, :, 10:53], torch.tensor(LETTERBOX_FILL))
    torch.testing.assert_close(batch.boxes[0, 0], torch.tensor([8.0, 4 * 43 / 32 + 10, 24.0, 12 * 43 / 32 + 10]))
    assert batch.keep.tolist() == [[True], [True]]
    torch.testing.assert_close(batch.boxes[1, 0], torch.tensor([0.0, 0.0, 64.0, 32.0]))
    assert batch.targets()["batch_idx"].tolist() == [0, 1]


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing an image decoder can use")


COCO_DEFECTS = {
    "missing image file": (lambda root, j: (root / "pictures" / "b.png").unlink(), r"b.png: missing image file"),
    "unreadable image": (lambda root, j: _garbage(root / "pictures" / "b.png"), r"b.png: unreadable image"),
    "box outside the image": (
        lambda root, j: _edit_json(j, lambda c: c["annotations"][0].update(bbox=[40, 4, 12, 8])),
        r"annotations.json: annotation 1 \(image a.png\): box .* outside the 48x32 image",
    ),
    "unknown category": (
        lambda root, j: _edit_json(j, lambda c: c["annotations"][1].update(category_id=7)),
        r"annotations.json: annotation 2: unknown category 7",
    ),
    "empty set": (lambda root, j: _edit_json(j, lambda c: c.update(images=[])), r"annotations.json: empty set"),
    "duplicate image ids": (
        lambda root, j: _edit_json(j, lambda c: c["images"][1].update(id=1)),
        r"annotations.json: duplicate image id 1",
    ),
    "duplicate annotation ids": (
        lambda root, j: _edit_json(j, lambda c: c["annotations"][2].update(id=1)),
        r"annotations.json: duplicate annotation id 1",
    ),
    "unknown image id": (
        lambda root, j: _edit_json(j, lambda c: c["annotations"][0].update(image_id=9)),
        r"annotations.json: annotation 1: unknown image id 9",
    ),
    "size differs from the file": (
        lambda root, j: _edit_json(j, lambda c: c["images"][0].update(width=64)),
        r"annotations.json: image 1 is 64x32 in the json but .*a.png is 48x32",
    ),
    "not json": (lambda root, j: j.write_text("{images: "), r"annotations.json: not valid JSON"),
    "bbox not numbers": (
        lambda root, j: _edit_json(j, lambda c: c["annotations"][0].update(bbox=["x", None, 1, 1])),
        r"annotations.json: annotation 1: bbox \['x', None, 1, 1\] is not \[x, y, width, height\]",
    ),
    "bbox not finite": (
        lambda root, j: _edit_json(j, lambda c: c["annotations"][0].update(bbox=[float("nan"), 0, 1, 1])),
        r"annotation 1: bbox \[nan, 0, 1, 1\] is not \[x, y, width, height\] \(four finite numbers\)",
    ),
    "bbox of three": (
        lambda root, j: _edit_json(j, lambda c: c["annotations"][0].update(bbox=[1, 1, 1])),
        r"annotation 1: bbox \[1, 1, 1\] is not",
    ),
    "image id not a scalar": (
        lambda root, j: _edit_json(j, lambda c: c["images"][0].update(id=[1])),
        r"an image entry's 'id' is \[1\], not int or str",
    ),
    "file name not a string": (
        lambda root, j: _edit_json(j, lambda c: c["images"][0].update(file_name=7)),
        r"an image entry's 'file_name' is 7, not str",
    ),
    "category id a bool": (
        lambda root, j: _edit_json(j, lambda c: c["categories"][0].update(id=True)),
        r"a category entry's 'id' is True, not int",
    ),
    "image declaring 60000x60000 pixels": (
        lambda root, j: (root / "pictures" / "b.png").write_bytes(_png_header(60000, 60000)),
        r"b.png: image over the limit of 100000000 pixels",
    ),
    "image declaring 11000x10000 pixels": (
        lambda root, j: (root / "pictures" / "b.png").write_bytes(_png_header(11000, 10000)),
        r"b.png: image of 11000x10000 pixels is over the limit of 100000000 pixels",
    ),
}


@pytest.mark.parametrize("defect", COCO_DEFECTS)
def test_each_coco_defect_gives_its_error(coco_set, defect):
    break_it, message = COCO_DEFECTS[defect]
    break_it(coco_set.parent, coco_set)
    with pytest.raises(DatasetError, match=message):
        load_coco(coco_set)


YOLO_DEFECTS = {
    "missing image file": (
        lambda root: (root / "labels" / "val" / "c.txt").write_text("0 0.5 0.5 0.1 0.1\n"),
        r"c.txt: missing image file: no image named c.\* in .*images/val",
    ),
    "unreadable image": (lambda root: _garbage(root / "images" / "val" / "b.png"), r"b.png: unreadable image"),
    "box outside the image": (
        lambda root: (root / "labels" / "val" / "a.txt").write_text("1 0.9 0.25 0.5 0.25\n"),
        r"a.txt: line 1: box .* outside the 48x32 image",
    ),
    "unknown category": (
        lambda root: (root / "labels" / "val" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n"),
        r"a.txt: line 2: unknown category 2 \(2 classes\)",
    ),
    "empty set": (
        lambda root: [p.unlink() for p in (root / "images" / "val").iterdir()] and None,
        r"images/val: empty set: no images",
    ),
    "no boxes at all": (lambda root: (root / "labels" / "val" / "a.txt").write_text(""), r"empty set: no boxes"),
    "duplicate image ids": (
        lambda root: _write_png(root / "images" / "val" / "a.jpg", 8, 8),
        r"a.png: duplicate image id: a.jpg has the same name",
    ),
    "malformed line": (
        lambda root: (root / "labels" / "val" / "a.txt").write_text("1 0.5 0.5 0.1\n"),
        r"a.txt: line 1: expected 'class cx cy w h'",
    ),
    "no data.yaml": (lambda root: (root / "data.yaml").unlink(), r"data.yaml: file not found"),
}


@pytest.mark.parametrize("defect", YOLO_DEFECTS)
def test_each_yolo_defect_gives_its_error(yolo_set, defect):
    break_it, message = YOLO_DEFECTS[defect]
    break_it(yolo_set)
    with pytest.raises(DatasetError, match=message):
        load_yolo(yolo_set)


def test_writer_output_reads_back_in_both_formats_and_in_ultralytics(tmp_path):
    out = tmp_path / "rendered"
    images = [torch.rand(3, 32, 48), torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    boxes = [
        torch.tensor([[4.0, 2.0, 20.0, 30.0], [30.0, 10.0, 60.0, 20.0]]),  # the second leaves the frame: clipped
        torch.tensor([[10.0, 10.0, 10.5, 40.0]]),  # under a pixel wide: dropped
        torch.tensor([[1.0, 2.0, 33.0, 34.0]]),
    ]
    classes = [torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([2])]
    with DatasetWriter(out, ["mug", "can", "box"]) as writer:
        for i in range(3):
            writer.add(images[i], boxes[i], classes[i], meta={"azimuth_deg": 30.0 * i, "distance": [1.5, 2.0]})

    expected_boxes = [[[4, 2, 20, 30], [30, 10, 48, 20]], [], [[1, 2, 33, 34]]]
    for dataset in (load_coco(out / "annotations.json"), load_yolo(out)):
        assert dataset.class_names == ["mug", "can", "box"]
        for item, expected, image in zip(dataset.images, expected_boxes, images):
            torch.testing.assert_close(item.boxes, torch.tensor(expected).reshape(-1, 4).float(), atol=1e-3, rtol=0)
            assert (item.height, item.width) == image.shape[1:]
        assert [item.classes.tolist() for item in dataset.images] == [[0, 1], [], [2]]
    written = read_image(out / "images" / "000002.png")
    assert (written - images[2]).abs().max() <= 0.5 / 255 + 1e-6

    data = check_det_dataset(str(out / "data.yaml"))  # what Ultralytics' trainer does with it
    assert data["nc"] == 3 and Path(data["train"]) == Path(data["val"]) == (out / "images").resolve()

    card = json.loads((out / "card.json").read_text())
    assert card["num_images"] == 3 and card["num_boxes"] == 3 and card["images_without_boxes"] == 1
    assert card["class_counts"] == {"mug": 1, "can": 1, "box": 1}
    assert card["meta"]["azimuth_deg"]["max"] == 60.0 and card["meta"]["distance"]["count"] == 6
    assert sum(card["box_size_px"]["histogram"]["counts"]) == 3
    assert "| can | 1 |" in (out / "card.md").read_text()
    assert Image.open(out / "card_grid.png").size == (2 * 256, 2 * 256)
    assert Image.open(out / "card_histograms.png").size[0] > 0

    moved = out.rename(tmp_path / "moved")  # relocatable: data.yaml names no absolute path
    assert Path(check_det_dataset(str(moved / "data.yaml"))["train"]) == (moved / "images").resolve()
    assert len(load_yolo(moved)) == 3


def test_writer_refuses_bad_data(tmp_path):
    writer = DatasetWriter(tmp_path / "out", ["mug"])
    with pytest.raises(DatasetError, match=r"class ids \[0, 1\] outside 0..0"):
        writer.add(torch.rand(3, 8, 8), torch.tensor([[0.0, 0, 4, 4], [1, 1, 5, 5]]), torch.tensor([0, 1]))
    with pytest.raises(DatasetError, match="not JSON-serialisable"):
        writer.add(torch.rand(3, 8, 8), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), meta={"pose": object()})
    with pytest.raises(DatasetError, match="empty set: no images were added"):
        writer.close()
    writer.add(torch.rand(3, 8, 8), torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([0]))
    writer.close()
    with pytest.raises(DatasetError, match="writer is closed"):
        writer.add(torch.rand(3, 8, 8), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))


def test_unreadable_image_does_not_trigger_a_package_install(tmp_path) -> None:
    """Ultralytics patches PIL.Image.open to pip-install pi-heif on unidentified files."""
    import PIL.Image
    from PIL import UnidentifiedImageError

    import detector  # noqa: F401  (imports Ultralytics and neutralises its patch)

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(UnidentifiedImageError):
        PIL.Image.open(broken)
