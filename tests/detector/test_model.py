import pytest
import torch
from ultralytics import YOLO

from detector.errors import DetectorError
from detector.losses import trainable_parameters
from detector.model import DetectorConfig, build_detector, load_detector, save_detector


@pytest.mark.parametrize("arch", ["yolov8n", "yolo11n", "yolov8n-cpu"])
def test_builds_each_architecture_offline_with_the_job_classes(arch):
    model = build_detector(DetectorConfig(arch=arch, class_names=["mug", "can", "box"], image_size=64))

    assert model.names == {0: "mug", 1: "can", 2: "box"}
    assert model.model[-1].nc == 3
    assert (model.args.box, model.args.cls, model.args.dfl) == (7.5, 0.5, 1.5)
    assert model.training
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(".dfl" in name for name in frozen)
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, 64, 64))
    assert outputs["scores"].shape == (1, 3, 8 * 8 + 4 * 4 + 2 * 2)


def test_cpu_variant_is_smaller_than_the_nano_models():
    sizes = {
        arch: sum(p.numel() for p in build_detector(DetectorConfig(arch=arch, class_names=["a"])).parameters())
        for arch in ("yolov8n", "yolo11n", "yolov8n-cpu")
    }
    assert sizes["yolov8n-cpu"] < sizes["yolo11n"] / 2
    assert sizes["yolov8n-cpu"] < sizes["yolov8n"] / 2


def test_same_seed_same_initial_weights():
    config = DetectorConfig(arch="yolov8n-cpu", class_names=["a"], seed=3)
    first, second = build_detector(config), build_detector(config)
    other = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["a"], seed=4))
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters()))


@pytest.mark.parametrize(
    "settings, problem",
    [
        ({"arch": "yolov5x", "class_names": ["a"]}, "unknown detector arch"),
        ({"class_names": []}, "at least one class"),
        ({"class_names": ["a", "a"]}, "duplicate class names"),
        ({"class_names": ["a"], "image_size": 100}, "multiple of 32"),
    ],
)
def test_bad_config_is_refused(settings, problem):
    with pytest.raises(DetectorError, match=problem):
        DetectorConfig(**settings)


def test_missing_or_foreign_weights_file_is_refused(tmp_path):
    with pytest.raises(DetectorError, match="not found"):
        build_detector(DetectorConfig(class_names=["a"], weights=tmp_path / "none.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DetectorError, match="garbage.pt: not a loadable"):
        build_detector(DetectorConfig(class_names=["a"], weights=garbage))


def test_saved_model_loads_with_plain_ultralytics_and_back_exactly(tmp_path):
    model = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["mug", "can"], seed=1))
    path = save_detector(model, tmp_path / "detector.pt")

    yolo = YOLO(str(path))
    assert yolo.task == "detect"
    assert yolo.names == {0: "mug", 1: "can"}
    yolo.predict(torch.rand(1, 3, 64, 64), imgsz=64, verbose=False)

    reloaded = load_detector(path)
    assert reloaded.training and reloaded.args.box == 7.5
    assert [p.requires_grad for p in reloaded.parameters()] == [p.requires_grad for p in model.parameters()]
    for original, loaded in zip(model.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(original, loaded)


def test_user_weights_transfer_layers_and_class_rows_by_name(tmp_path):
    source = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["mug", "can"], seed=1))
    weights = save_detector(source, tmp_path / "user.pt")

    model = build_detector(DetectorConfig(arch="yolov8n", class_names=["can", "box", "mug"], weights=weights, seed=2))

    assert model.names == {0: "can", 1: "box", 2: "mug"}
    first_conv = "model.0.conv.weight"
    assert torch.equal(model.state_dict()[first_conv], source.state_dict()[first_conv])  # arch from the weights
    class_logits = [name for name in model.state_dict() if name.startswith("model.22.cv3.0.2.")]
    for name in class_logits:
        assert torch.equal(model.state_dict()[name][0], source.state_dict()[name][1])  # can
        assert torch.equal(model.state_dict()[name][2], source.state_dict()[name][0])  # mug
    assert len(trainable_parameters(model)) == len(trainable_parameters(source))
