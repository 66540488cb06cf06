import copy
import os

import pytest
import torch
from ultralytics import YOLO

from detector.datasets import DatasetWriter, load_coco
from detector.errors import DetectorError
from detector.evaluate import evaluate
from detector.losses import BatchNormMode
from detector.model import DetectorConfig, build_detector, load_detector
from detector.targets import targets_from_boxes
from detector.train import finetune, train_on_dataset
from tests.detector.rectangles import rectangle_images

SIZE = 64
CLASS_NAMES = ["red", "blue"]


def _write_set(directory, count, generator):
    images, boxes, classes, keep = rectangle_images(count, SIZE, generator)
    with DatasetWriter(directory, CLASS_NAMES) as writer:
        for i in range(count):
            writer.add(images[i], boxes[i][keep[i]], classes[i][keep[i]])
    return directory


def test_finetuning_on_a_tiny_generated_set_reaches_map50_above_one_half(tmp_path, generator):
    model = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=CLASS_NAMES, image_size=SIZE))
    images, boxes, classes, keep = rectangle_images(64, SIZE, generator)
    validation = load_coco(_write_set(tmp_path / "val", 16, generator) / "annotations.json")

    state = finetune(
        model,
        images,
        targets_from_boxes(boxes, classes, keep, SIZE),
        steps=150,
        lr=0.005,
        bn_mode=BatchNormMode.UPDATE,
        optimizer_name="adamw",
        batch_size=8,
        generator=generator,
        progress=False,
    )
    metrics = evaluate(model, validation, SIZE, progress=False)

    assert state.steps_done == 150
    assert metrics.map50 > 0.5, metrics


def test_finetuning_resumes_exactly_where_it_stopped(generator):
    model = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=CLASS_NAMES, image_size=SIZE))
    images, boxes, classes, keep = rectangle_images(4, SIZE, generator)
    targets = targets_from_boxes(boxes, classes, keep, SIZE)
    in_one_go, in_two_parts = model, copy.deepcopy(model)
    settings = {"lr": 0.01, "bn_mode": BatchNormMode.UPDATE, "progress": False}

    whole = finetune(in_one_go, images, targets, steps=4, **settings)
    first = finetune(in_two_parts, images, targets, steps=2, **settings)
    second = finetune(in_two_parts, images, targets, steps=2, optimizer_state=first, **settings)

    assert second.steps_done == 4 and len(first.losses) == 2
    assert second.losses == pytest.approx(whole.losses, rel=1e-5)
    for a, b in zip(in_one_go.state_dict().values(), in_two_parts.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_batch_mode_finetuning_leaves_running_statistics_alone(generator):
    model = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=CLASS_NAMES, image_size=SIZE))
    images, boxes, classes, keep = rectangle_images(4, SIZE, generator)
    before = {name: b.clone() for name, b in model.named_buffers()}
    weights_before = [p.clone() for p in model.parameters()]

    targets = targets_from_boxes(boxes, classes, keep, SIZE)

    finetune(model, images, targets, steps=2, lr=0.01, bn_mode=BatchNormMode.BATCH, progress=False)

    assert all(torch.equal(b, before[name]) for name, b in model.named_buffers())
    assert not all(torch.equal(a, b) for a, b in zip(weights_before, model.parameters()))


def test_ultralytics_trainer_runs_offline_and_returns_a_loadable_checkpoint(tmp_path, generator):
    data = _write_set(tmp_path / "data", 16, generator)
    config = DetectorConfig(arch="yolov8n-cpu", class_names=CLASS_NAMES, image_size=SIZE)

    batches_seen = []
    threads = torch.get_num_threads()
    # Ultralytics' select_device sets torch's threads to cpu_count - 1: train_on_dataset puts
    # back whatever the caller had.
    torch.set_num_threads((os.cpu_count() or 1) + 1)
    try:
        best = train_on_dataset(
            config,
            data,
            epochs=1,
            image_size=SIZE,
            out_dir=tmp_path / "run",
            batch_size=8,
            progress=False,
            callbacks={"on_train_batch_end": [lambda trainer: batches_seen.append(trainer.epoch)]},
            plots=False,
        )
        assert torch.get_num_threads() == (os.cpu_count() or 1) + 1
    finally:
        torch.set_num_threads(threads)

    assert best.is_file() and best.parent == tmp_path / "run" / "train" / "weights"
    assert (tmp_path / "run" / "train" / "results.csv").is_file()
    assert batches_seen == [0, 0]  # 16 images, batches of 8
    assert YOLO(str(best)).names == {0: "red", 1: "blue"}
    reloaded = load_detector(best)
    assert reloaded.training and reloaded.names == {0: "red", 1: "blue"}


@pytest.mark.parametrize("argument", ["model", "pretrained", "resume", "project", "data"])
def test_trainer_arguments_that_name_files_are_refused(tmp_path, generator, argument):
    """Ultralytics' trainer unpickles the checkpoints it is pointed at and writes where it is told."""
    from tests.detector.test_checkpoint import _RunsCode

    data = _write_set(tmp_path / "data", 8, generator)
    marker = tmp_path / "marker"
    hostile = tmp_path / "hostile.pt"
    torch.save({"model": _RunsCode(marker)}, hostile)
    config = DetectorConfig(arch="yolov8n-cpu", class_names=CLASS_NAMES, image_size=SIZE)
    with pytest.raises(DetectorError, match=rf"\['{argument}'\] name files or folders"):
        train_on_dataset(config, data, epochs=1, image_size=SIZE, out_dir=tmp_path / "run", batch_size=8,
                         progress=False, plots=False, val=False, **{argument: str(hostile)})
    assert not marker.exists()
