"""Training folders with real photos: relative paths that survive the run folder's move, and
photos whose classes are not the dataset's are refused."""

import shutil

import pytest
from ultralytics.data.utils import check_det_dataset

from detector.datasets import DatasetWriter, LabelledSet, load_coco
from detector.errors import DatasetError
from detector.mixing import write_training_mix
from tests.detector.rectangles import rectangle_images

CLASS_NAMES = ["red", "blue"]


def _write_set(directory, count, generator):
    images, boxes, classes, keep = rectangle_images(count, 32, generator)
    with DatasetWriter(directory, CLASS_NAMES) as writer:
        for i in range(count):
            writer.add(images[i], boxes[i][keep[i]], classes[i][keep[i]])
    return directory


def test_the_mix_still_trains_after_the_run_folder_moves(tmp_path, generator):
    run = tmp_path / "run"
    photos = load_coco(_write_set(tmp_path / "photos", 2, generator) / "annotations.json")
    mix = write_training_mix(_write_set(run / "dataset", 8, generator), photos, run / "final_data", 1 / 3)
    assert (mix.synthetic_images, mix.real_photos, mix.repeats, mix.images_per_epoch) == (8, 2, 2, 12)
    shutil.move(run, tmp_path / "moved")
    data = check_det_dataset(str(tmp_path / "moved" / "final_data" / "data.yaml"))
    assert [str(p) for p in data["train"]] == [str(tmp_path / "moved" / "dataset" / "images"),
                                              str(tmp_path / "moved" / "final_data" / "real" / "images")]
    assert data["names"] == dict(enumerate(CLASS_NAMES))


def test_photos_with_other_classes_are_refused(tmp_path, generator):
    photos = load_coco(_write_set(tmp_path / "photos", 2, generator) / "annotations.json")
    swapped = LabelledSet(photos.images, ["blue", "red"], photos.source)
    with pytest.raises(DatasetError, match=r"classes \['blue', 'red'\] differ from the dataset's \['red', 'blue'\]"):
        write_training_mix(_write_set(tmp_path / "dataset", 4, generator), swapped, tmp_path / "mix", 1 / 3)
