"""Reading a YOLO detection checkpoint that someone else wrote, without running any of its code.

Ultralytics loads ``.pt`` files with ``torch.load(weights_only=False)``: a crafted pickle runs
as the caller. Here the file is read with ``weights_only=True``, and the globals it may name
are exactly those of Ultralytics detection checkpoints (:data:`ALLOWED_GLOBALS`, found with
``torch.serialization.get_unsafe_globals_in_checkpoint`` on checkpoints of yolov8n, yolo11n
and yolov8n-cpu written by :func:`detector.model.save_detector` and by Ultralytics' trainer;
yolo26n's are the same).

Even allowlisted classes are not trusted with the file's data: the restricted unpickler calls
an allowed class with arguments taken from the file (``REDUCE``), and ``DetectionModel(cfg)``
``eval``s the ``activation`` of its yaml and looks layer names up among ``ultralytics.nn.tasks``'
globals. So each allowed name unpickles to an inert stand-in (:class:`_Inert`) that only keeps
its state; the model is then rebuilt from the checkpoint's yaml after that yaml passed
:func:`_checked_yaml` (known layers, literal arguments, bounded sizes), its architecture is
compared tensor by tensor with the checkpoint (on the meta device, so a forged yaml costs no
memory), and only the tensors are copied in.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ultralytics.nn.modules import Conv
from ultralytics.nn.tasks import DetectionModel, parse_model

from detector.errors import DetectorError

ALLOWED_GLOBALS = (
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
    "ultralytics.nn.modules.block.Attention",
    "ultralytics.nn.modules.block.Bottleneck",
    "ultralytics.nn.modules.block.C2PSA",
    "ultralytics.nn.modules.block.C2f",
    "ultralytics.nn.modules.block.C3k",
    "ultralytics.nn.modules.block.C3k2",
    "ultralytics.nn.modules.block.DFL",
    "ultralytics.nn.modules.block.PSABlock",
    "ultralytics.nn.modules.block.SPPF",
    "ultralytics.nn.modules.conv.Concat",
    "ultralytics.nn.modules.conv.Conv",
    "ultralytics.nn.modules.conv.DWConv",
    "ultralytics.nn.modules.head.Detect",
    "ultralytics.nn.tasks.DetectionModel",
    "ultralytics.utils.IterableSimpleNamespace",
)
"""Globals (beyond the tensors and containers torch itself allows) of an Ultralytics detection
checkpoint of the YOLOv8, YOLO11 and YOLO26 families; a checkpoint naming any other is refused."""

DETECTION_MODEL = "ultralytics.nn.tasks.DetectionModel"

LAYER_MODULES = frozenset({"Conv", "C2f", "C3k2", "C2PSA", "SPPF", "Concat", "Detect", "nn.Upsample"})
"""Layer names a checkpoint's yaml may use: those of the YOLOv8, YOLO11 and YOLO26 detection yamls."""

ACTIVATION = re.compile(r"(torch\.)?nn\.(SiLU|ReLU|ReLU6|LeakyReLU|Hardswish|Mish|GELU|Identity)\((\d+(\.\d+)?)?\)")
"""An activation spec of the yaml (Ultralytics ``eval``s it): a torch activation, literal argument."""

STRING_ARGUMENTS = frozenset({"nc", "None", "nearest"})
"""Strings a yaml layer's arguments may hold (Ultralytics resolves them to a local or a literal)."""

MAX_LAYERS = 64
MAX_REPEATS = 16
MAX_CHANNELS = 4096
MAX_CLASSES = 2000
"""More than LVIS's 1203 classes."""
MAX_DEPTH = 32
"""Nesting of modules and containers in a checkpoint (Ultralytics' go about 6 deep)."""

_load_lock = threading.Lock()
"""torch's allowlist is process-wide: loads take turns so that one's exit does not strip another's."""


@dataclass
class DetectorCheckpoint:
    """What a checkpoint holds, read safely."""

    model: DetectionModel
    """Rebuilt from the checked yaml with the checkpoint's tensors, names set, in eval mode."""
    class_names: list[str]
    parameters: int
    """Number of parameters of the model."""
    scale: str | None
    """The yaml's model scale (n, s, m, l, x) when it names one."""
    yaml_file: str | None
    """The model yaml the checkpoint was built from (e.g. ``yolov8n.yaml``) when recorded."""


class _Inert:
    """Stand-in for an allowlisted class: keeps the state the file gives it, runs nothing else."""

    qualified_name = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["pickled_state"] = {}

    def __setstate__(self, state: Any) -> None:
        self.__dict__["pickled_state"] = state


_STAND_INS = {name: type(name.rpartition(".")[2], (_Inert,), {"qualified_name": name}) for name in ALLOWED_GLOBALS}


def read_detector_checkpoint(path: Path) -> DetectorCheckpoint:
    """The detection model in the Ultralytics checkpoint at ``path``; :class:`DetectorError`
    naming the problem for anything else (a foreign global, another task, a forged yaml)."""
    path = Path(path)
    if not path.is_file():
        raise DetectorError(f"{path}: detector weights file not found")
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as error:  # zip, pickle and torch errors all mean an unreadable file here
        raise DetectorError(f"{path}: not a loadable Ultralytics checkpoint ({error})") from error
    foreign = sorted(set(found) - set(ALLOWED_GLOBALS))
    if foreign:
        raise DetectorError(f"{path}: not a YOLO detection checkpoint: it references {', '.join(foreign[:5])}"
                            f"{' ...' if len(foreign) > 5 else ''} (only Ultralytics detection layers are loaded)")
    with _load_lock:  # also keeps Ultralytics' process-wide Conv.default_act to one build at a time
        return _read(path)


def _read(path: Path) -> DetectorCheckpoint:
    checkpoint = _restricted_load(path)
    source = (checkpoint.get("ema") or checkpoint.get("model")) if isinstance(checkpoint, dict) else None
    if not isinstance(source, _Inert):
        raise DetectorError(f"{path}: not an Ultralytics checkpoint (no 'model' or 'ema' model in it)")
    if source.qualified_name != DETECTION_MODEL:
        raise DetectorError(f"{path}: holds a {source.qualified_name}, not a YOLO detection model")
    state = source.pickled_state if isinstance(source.pickled_state, dict) else {}
    class_names = _class_names(state.get("names"), path)
    model_yaml = _checked_yaml(state.get("yaml"), path)
    model_yaml["nc"] = len(class_names)
    tensors = _module_tensors(source, path)
    _check_architecture(model_yaml, tensors, path)
    try:
        with _building(), torch.random.fork_rng(devices=[]):  # the initialisation is overwritten: keep the RNG
            model = DetectionModel(model_yaml, nc=len(class_names), verbose=False)
            model.load_state_dict(tensors, strict=True)
    except Exception as error:  # e.g. layers whose outputs do not fit together, tensors that do not copy
        raise DetectorError(f"{path}: the model does not build from its yaml and weights "
                            f"({type(error).__name__}: {error})") from error
    model.names = dict(enumerate(class_names))
    model.eval()
    return DetectorCheckpoint(model=model, class_names=class_names,
                              parameters=sum(p.numel() for p in model.parameters()),
                              scale=model_yaml.get("scale"), yaml_file=model_yaml.get("yaml_file"))


def _restricted_load(path: Path) -> Any:
    registered = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"
                  for g in torch.serialization.get_safe_globals()}
    clash = sorted(registered & set(ALLOWED_GLOBALS))
    if clash:  # the real class would be looked up instead of the stand-in
        raise DetectorError(f"{path}: refusing to load while {clash[0]} is registered as a torch safe global")
    try:
        with torch.serialization.safe_globals([(c, n) for n, c in _STAND_INS.items()]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DetectorError(f"{path}: not a loadable Ultralytics checkpoint ({error})") from error


def _class_names(names: Any, path: Path) -> list[str]:
    if isinstance(names, dict) and list(names) == list(range(len(names))):
        names = list(names.values())
    if (not isinstance(names, list) or not 0 < len(names) <= MAX_CLASSES
            or not all(isinstance(n, str) and 0 < len(n) <= 128 for n in names)):
        raise DetectorError(f"{path}: the model's class names are not a list of 1 to {MAX_CLASSES} names")
    if len(set(names)) != len(names):
        raise DetectorError(f"{path}: duplicate class names in the checkpoint")
    return names


def _checked_yaml(raw: Any, path: Path) -> dict:
    """A copy of the model yaml holding only the keys Ultralytics reads for a detection model,
    each checked, so that building the model runs no code from the file and stays small."""

    def fail(problem: str) -> DetectorError:
        return DetectorError(f"{path}: the model yaml {problem}")

    if not isinstance(raw, dict):
        raise fail("is missing")
    out: dict[str, Any] = {}
    for key in ("scale", "yaml_file"):
        if key in raw:
            if not isinstance(raw[key], str) or len(raw[key]) > 64:
                raise fail(f"has a bad {key!r}")
            out[key] = raw[key]
    for key, low, high in (("depth_multiple", 0, 4), ("width_multiple", 0, 4)):
        if key in raw:
            if not _number(raw[key], low, high):
                raise fail(f"{key!r} is not a number in ({low}, {high}]")
            out[key] = raw[key]
    if "scales" in raw:
        scales = raw["scales"]
        if not isinstance(scales, dict) or not all(
                isinstance(k, str) and isinstance(v, list) and len(v) == 3 and _number(v[0], 0, 4)
                and _number(v[1], 0, 4) and _integer(v[2], 1, MAX_CHANNELS) for k, v in scales.items()):
            raise fail("has malformed 'scales' (name: [depth, width, max_channels])")
        if out.get("scale") is not None and out["scale"] not in scales:
            raise fail(f"names scale {out['scale']!r} that its 'scales' lack")
        out["scales"] = scales
    if raw.get("activation") is not None:
        if not isinstance(raw["activation"], str) or not ACTIVATION.fullmatch(raw["activation"]):
            raise fail(f"has an activation that is not a plain torch activation: {str(raw['activation'])[:80]!r}")
        out["activation"] = raw["activation"]
    if "reg_max" in raw:
        if not _integer(raw["reg_max"], 1, 64):
            raise fail("'reg_max' is not an integer in [1, 64]")
        out["reg_max"] = raw["reg_max"]
    for key in ("end2end", "inplace"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise fail(f"{key!r} is not a boolean")
            out[key] = raw[key]
    out["nc"] = raw.get("nc")
    for part in ("backbone", "head"):
        layers = raw.get(part)
        if not isinstance(layers, list) or not layers:
            raise fail(f"has no {part!r} layers")
        out[part] = [_checked_layer(layer, f"{part} layer {i}", fail) for i, layer in enumerate(layers)]
    if len(out["backbone"]) + len(out["head"]) > MAX_LAYERS:
        raise fail(f"has more than {MAX_LAYERS} layers")
    if out["head"][-1][2] != "Detect":
        raise fail("does not end in a Detect head")
    return deepcopy(out)


def _checked_layer(layer: Any, where: str, fail) -> list:
    if not isinstance(layer, list) or len(layer) != 4:
        raise fail(f"{where} is not [from, repeats, module, args]")
    source, repeats, module, args = layer
    sources = source if isinstance(source, list) else [source]
    if not sources or len(sources) > 8 or not all(_integer(s, -MAX_LAYERS, MAX_LAYERS) for s in sources):
        raise fail(f"{where}: 'from' is not a layer index or a list of them")
    if not _integer(repeats, 1, MAX_REPEATS):
        raise fail(f"{where}: repeats is not an integer in [1, {MAX_REPEATS}]")
    if module not in LAYER_MODULES:
        raise fail(f"{where}: module {str(module)[:80]!r} is not one of {sorted(LAYER_MODULES)}")
    if not isinstance(args, list) or len(args) > 8 or not all(_literal_argument(a) for a in args):
        raise fail(f"{where}: arguments must be a short list of numbers, booleans, None or {sorted(STRING_ARGUMENTS)}")
    return [source, repeats, module, list(args)]


def _literal_argument(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, str):
        return value in STRING_ARGUMENTS
    return _integer(value, -MAX_CHANNELS, MAX_CHANNELS) or _number(value, -MAX_CHANNELS, MAX_CHANNELS)


def _integer(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value: Any, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low < value <= high


def _module_tensors(source: _Inert, path: Path) -> dict[str, torch.Tensor]:
    """The parameters and persistent buffers of the stand-in module tree, by state-dict name."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(module: Any, prefix: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise DetectorError(f"{path}: modules nested more than {MAX_DEPTH} deep")
        state = module.pickled_state if isinstance(module, _Inert) else None
        if not isinstance(state, dict) or module.qualified_name == "ultralytics.utils.IterableSimpleNamespace":
            raise DetectorError(f"{path}: {prefix or 'the model'} is not a torch module")
        skipped = state.get("_non_persistent_buffers_set") or set()
        for kind in ("_parameters", "_buffers"):
            for name, tensor in (state.get(kind) or {}).items():
                if tensor is None or (kind == "_buffers" and name in skipped):
                    continue
                if not isinstance(tensor, torch.Tensor) or not isinstance(name, str):
                    raise DetectorError(f"{path}: {prefix}{name} is not a tensor")
                tensors[f"{prefix}{name}"] = tensor
        for name, child in (state.get("_modules") or {}).items():
            if child is not None:
                walk(child, f"{prefix}{name}.", depth + 1)

    walk(source, "", 0)
    return tensors


def _check_architecture(model_yaml: dict, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The yaml's layers, built on the meta device (no memory), have exactly the checkpoint's
    tensor names and shapes."""
    try:
        with _building(), torch.device("meta"):
            layers, _ = parse_model(deepcopy(model_yaml), ch=3, verbose=False)
    except Exception as error:  # a yaml whose sizes do not fit together
        raise DetectorError(f"{path}: the model yaml does not build ({type(error).__name__}: {error})") from error
    expected = {f"model.{name}": tuple(t.shape) for name, t in layers.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        differing = sorted(set(expected) ^ set(found)) or sorted(n for n in expected if expected[n] != found[n])
        raise DetectorError(f"{path}: the weights do not match the model yaml (first difference: {differing[0]})")


@contextlib.contextmanager
def _building() -> Iterator[None]:
    """Ultralytics sets the process-wide ``Conv.default_act`` from the yaml and restores it only
    when the model builds: restore it whatever happens."""
    default_activation = Conv.default_act
    try:
        yield
    finally:
        Conv.default_act = default_activation
