"""Reading YOLO detection checkpoints without running their code: what Ultralytics and nerfsim
write loads exactly; pickles that would run code, foreign models and forged yamls are refused
and run nothing (each would have run or loaded through Ultralytics' own loader)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from ultralytics.nn.modules import Conv
from ultralytics.nn.tasks import ClassificationModel, DetectionModel, load_checkpoint

from detector.checkpoint import ALLOWED_GLOBALS, read_detector_checkpoint
from detector.errors import DetectorError
from detector.model import DetectorConfig, build_detector, load_detector, save_detector
from detector.train import train_on_dataset
from tests.detector.test_train import CLASS_NAMES, SIZE, _write_set


class _RunsCode:
    """Unpickling this creates ``marker``: what a hostile checkpoint would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _CallsDetectionModel:
    """Pickles as DetectionModel(cfg) with ``cfg`` from the file: allowlisting the real class
    would run its constructor, which evals the yaml's activation."""

    def __init__(self, marker: Path) -> None:
        self.yaml = {"nc": 1, "activation": f"__import__('os').system('touch {marker}')",
                     "backbone": [[-1, 1, "Conv", [16, 3, 2]]], "head": [[-1, 1, "Detect", ["nc"]]]}

    def __reduce__(self):
        return DetectionModel, (self.yaml,)


def _assert_same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    first, second = a.state_dict(), b.state_dict()
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name].float(), second[name].float()), name


@pytest.mark.parametrize("arch", ["yolov8n", "yolo11n", "yolov8n-cpu"])
def test_reads_what_save_detector_writes_exactly(tmp_path, arch):
    model = build_detector(DetectorConfig(arch=arch, class_names=["mug", "can"], seed=3))
    path = save_detector(model, tmp_path / "weights.pt")

    checkpoint = read_detector_checkpoint(path)

    assert checkpoint.class_names == ["mug", "can"] and checkpoint.model.names == {0: "mug", 1: "can"}
    assert checkpoint.parameters == sum(p.numel() for p in model.parameters())
    assert checkpoint.scale == "n" and checkpoint.yaml_file.endswith(".yaml")
    _assert_same_tensors(checkpoint.model, model)
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) <= set(ALLOWED_GLOBALS)


def test_reads_what_ultralytics_trainer_writes_as_ultralytics_does(tmp_path, generator):
    data = _write_set(tmp_path / "data", 8, generator)
    config = DetectorConfig(arch="yolov8n-cpu", class_names=CLASS_NAMES, image_size=SIZE)
    during = tmp_path / "during.pt"  # last.pt as saved during training (the end strips its optimizer)
    best = train_on_dataset(config, data, epochs=1, image_size=SIZE, out_dir=tmp_path / "run", batch_size=8,
                            progress=False, plots=False, val=False,
                            callbacks={"on_model_save": [lambda trainer: shutil.copyfile(trainer.last, during)]})
    saved = torch.load(during, map_location="cpu", weights_only=False)  # our own file: the reference
    assert saved["ema"] is not None and saved["optimizer"] is not None and saved["train_args"]

    for path in (during, best):
        checkpoint = read_detector_checkpoint(path)
        reference, _ = load_checkpoint(path)
        _assert_same_tensors(checkpoint.model, reference)
        assert checkpoint.class_names == CLASS_NAMES
    assert load_detector(best).training


def test_a_pickle_that_runs_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "marker"
    for name, payload in [("bare.pt", _RunsCode(marker)),
                          ("inside.pt", {"model": _RunsCode(marker)}),
                          ("train_args.pt", {"model": None, "ema": None, "train_args": _RunsCode(marker)})]:
        path = tmp_path / name
        torch.save(payload, path)
        with pytest.raises(DetectorError, match=rf"{name}: not a YOLO detection checkpoint: it references posix.system"):
            read_detector_checkpoint(path)
        with pytest.raises(DetectorError, match="posix.system"):
            build_detector(DetectorConfig(class_names=["a"], weights=path))
        assert not marker.exists()


def test_an_allowlisted_class_is_never_called_with_the_files_arguments(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "reduce.pt"
    torch.save({"model": _CallsDetectionModel(marker)}, path)

    with pytest.raises(DetectorError, match="reduce.pt: the model's class names"):
        build_detector(DetectorConfig(class_names=["a"], weights=path))
    assert not marker.exists()


@pytest.mark.parametrize(
    "forge, problem",
    [
        (lambda y: y.update(activation="__import__('os').system('touch {marker}')"), "activation that is not"),
        (lambda y: y["head"].insert(0, [-1, 1, "torch_safe_load", ["{marker}"]]), "'torch_safe_load' is not one of"),
        (lambda y: y["backbone"][0][3].append("__import__('os')"), "arguments must be"),
        (lambda y: y["backbone"][1].__setitem__(3, [10**9, 3, 2]), "arguments must be"),
        (lambda y: y["head"].pop(), "does not end in a Detect head"),
        (lambda y: y["backbone"][0][3].__setitem__(1, 5), "the weights do not match the model yaml"),
        (lambda y: (y.update(activation="nn.ReLU()"), y["head"].insert(0, [[-1, 40], 1, "Concat", [1]])),
         "the model yaml does not build"),
    ],
)
def test_a_forged_model_yaml_is_refused_and_runs_nothing(tmp_path, forge, problem):
    marker = tmp_path / "marker"
    model = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["a"]))
    forge(model.yaml)
    for layer in model.yaml["backbone"] + model.yaml["head"]:
        layer[3] = [a.format(marker=marker) if isinstance(a, str) else a for a in layer[3]]
    if isinstance(model.yaml.get("activation"), str):
        model.yaml["activation"] = model.yaml["activation"].format(marker=marker)
    path = save_detector(model, tmp_path / "forged.pt")
    default_activation = Conv.default_act

    with pytest.raises(DetectorError, match=problem):
        build_detector(DetectorConfig(class_names=["a"], weights=path))
    assert not marker.exists()
    assert Conv.default_act is default_activation


def test_other_models_and_files_are_refused(tmp_path):
    classifier = ClassificationModel("yolov8n-cls.yaml", nc=2, verbose=False)
    torch.save({"model": classifier}, tmp_path / "classify.pt")
    with pytest.raises(DetectorError, match="not a YOLO detection checkpoint: it references .*ClassificationModel"):
        read_detector_checkpoint(tmp_path / "classify.pt")

    model = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["a"]))
    torch.save(model.state_dict(), tmp_path / "state_dict.pt")
    with pytest.raises(DetectorError, match="state_dict.pt: not an Ultralytics checkpoint"):
        read_detector_checkpoint(tmp_path / "state_dict.pt")

    torch.save({"model": torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))}, tmp_path / "sequential.pt")
    with pytest.raises(DetectorError, match="holds a torch.nn.modules.container.Sequential, not a YOLO detection"):
        read_detector_checkpoint(tmp_path / "sequential.pt")

    with pytest.raises(DetectorError, match="not found"):
        read_detector_checkpoint(tmp_path / "none.pt")


def test_layers_whose_outputs_do_not_fit_are_refused(tmp_path):
    """The yaml matches the weights (an upsampling has none) but its forward pass cannot run."""
    model = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["a"]))
    model.yaml["head"][0][3] = [None, 4, "nearest"]  # P5 upsampled 4x no longer fits P4 in the Concat
    path = save_detector(model, tmp_path / "mismatch.pt")
    default_activation = Conv.default_act
    with pytest.raises(DetectorError, match="mismatch.pt: the model does not build from its yaml and weights"):
        read_detector_checkpoint(path)
    assert Conv.default_act is default_activation
