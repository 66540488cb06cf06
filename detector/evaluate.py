"""Detection metrics with pycocotools: mAP50-95, mAP50 and per-class AP.

pycocotools is the reference implementation of COCO mAP (101-point interpolated precision,
IoU thresholds 0.50:0.05:0.95, up to 100 detections per image). Boxes are compared in the
letterboxed network input frame, which scales every box of an image alike and so leaves
the IoUs, hence the APs, unchanged.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from tqdm import tqdm
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.nms import non_max_suppression

from detector.datasets import LabelledSet
from detector.errors import DetectorError


@dataclass
class Detections:
    """The detections of one image."""

    boxes: Float[Tensor, "N 4"]
    """xyxy pixels."""
    scores: Float[Tensor, "N"]
    classes: Int[Tensor, "N"]


@dataclass
class DetectionMetrics:
    map50_95: float
    """COCO mAP averaged over IoU 0.50:0.95 and the classes with ground truth."""
    map50: float
    """mAP at IoU 0.50."""
    per_class_ap: dict[str, float]
    """AP50-95 of each class that has ground-truth boxes (classes without any are left out)."""


@contextlib.contextmanager
def inference_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (running BatchNorm statistics, decoded head outputs) and no autograd; the
    modules' train/eval flags are restored on exit."""
    was_training = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in zip(model.modules(), was_training):
            m.training = training


def predict(
    model: DetectionModel,
    images: Float[Tensor, "B 3 S S"],
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
) -> list[Detections]:
    """Detections after Ultralytics' NMS (conf threshold, IoU threshold ``iou``); not differentiable."""
    with inference_mode(model):
        output = model(images.to(next(model.parameters()).device))
    decoded = output[0] if isinstance(output, tuple) else output
    per_image = non_max_suppression(decoded, conf, iou, max_det=max_det, end2end=getattr(model, "end2end", False))
    return [Detections(d[:, :4].cpu(), d[:, 4].cpu(), d[:, 5].long().cpu()) for d in per_image]


def evaluate(
    model: DetectionModel,
    dataset: LabelledSet,
    image_size: int,
    conf: float = 0.001,
    iou: float = 0.7,
    batch_size: int = 16,
    progress: bool = True,
) -> DetectionMetrics:
    """mAP of ``model`` on ``dataset``, its images letterboxed to ``image_size`` squares."""
    return evaluate_predictions(*predict_dataset(model, dataset, image_size, conf, iou, batch_size, progress),
                                dataset.class_names)


def predict_dataset(
    model: DetectionModel,
    dataset: LabelledSet,
    image_size: int,
    conf: float = 0.001,
    iou: float = 0.7,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[list[Detections], list[Tensor], list[Tensor]]:
    """Per image of ``dataset`` (in order): ``model``'s detections, the true boxes and classes,
    in the letterboxed frame (what :func:`evaluate_predictions` takes; a bootstrap resamples
    these lists instead of running the model again)."""
    predictions, true_boxes, true_classes = [], [], []
    batches = dataset.batches(image_size, batch_size)
    total = -(-len(dataset) // batch_size)
    for batch in tqdm(batches, total=total, desc="evaluate", unit="batch", disable=not progress):
        predictions += predict(model, batch.images, conf=conf, iou=iou)
        true_boxes += [boxes[keep] for boxes, keep in zip(batch.boxes, batch.keep)]
        true_classes += [classes[keep] for classes, keep in zip(batch.classes, batch.keep)]
    return predictions, true_boxes, true_classes


def evaluate_predictions(
    predictions: Sequence[Detections],
    true_boxes: Sequence[Float[Tensor, "N 4"]],
    true_classes: Sequence[Int[Tensor, "N"]],
    class_names: list[str],
) -> DetectionMetrics:
    """mAP of per-image ``predictions`` against the ground truth (xyxy pixels, same frame)."""
    evaluation = _matched(predictions, true_boxes, true_classes, class_names)
    if evaluation is None:
        return DetectionMetrics(0.0, 0.0, {class_names[c]: 0.0 for c in _classes_with_ground_truth(true_classes)})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the summary table
        evaluation.accumulate()
        evaluation.summarize()
    # precision[iou threshold, recall, class, area range ("all" first), max detections (100 last)]
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for c in _classes_with_ground_truth(true_classes):
        values = precision[:, :, c]
        per_class[class_names[c]] = float(values[values > -1].mean()) if (values > -1).any() else 0.0
    return DetectionMetrics(float(evaluation.stats[0]), float(evaluation.stats[1]), per_class)


def resampled_map50_95(
    predictions: Sequence[Detections],
    true_boxes: Sequence[Float[Tensor, "N 4"]],
    true_classes: Sequence[Int[Tensor, "N"]],
    class_names: list[str],
    resamples: Sequence[Sequence[int]],
) -> list[float]:
    """mAP50-95 (as :func:`evaluate_predictions` computes it) on each resample of the images:
    a list of image indices, repeats allowed (a bootstrap). The detections are matched to the
    boxes once per image; each resample only re-accumulates those matches, as pycocotools would
    for a set holding those images (a repeated image counts as often as it is drawn)."""
    evaluation = _matched(predictions, true_boxes, true_classes, class_names)
    if evaluation is None:
        return [0.0] * len(resamples)
    matched, images, areas = evaluation.evalImgs, len(true_boxes), len(evaluation._paramsEval.areaRng)
    classes = len(matched) // (areas * images)  # evalImgs: a block of images per (class, area range)
    for params in (evaluation.params, evaluation._paramsEval):  # mAP50-95 reads "all" areas, 100 detections
        params.areaRng, params.areaRngLbl, params.maxDets = params.areaRng[:1], params.areaRngLbl[:1], params.maxDets[-1:]
    scores = []
    for rows in resamples:
        evaluation.evalImgs = [matched[c * areas * images + row] for c in range(classes) for row in rows]
        evaluation.params.imgIds = evaluation._paramsEval.imgIds = list(range(len(rows)))
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation.accumulate()
        precision = evaluation.eval["precision"][:, :, :, 0, -1]
        scores.append(float(precision[precision > -1].mean()) if (precision > -1).any() else 0.0)
    return scores


def _matched(
    predictions: Sequence[Detections],
    true_boxes: Sequence[Float[Tensor, "N 4"]],
    true_classes: Sequence[Int[Tensor, "N"]],
    class_names: list[str],
) -> COCOeval | None:
    """pycocotools' evaluation of ``predictions`` after its per-image matching (``evaluate()``),
    before accumulation; None when nothing was detected."""
    if not len(predictions) == len(true_boxes) == len(true_classes):
        raise DetectorError(
            f"{len(predictions)} prediction lists for {len(true_boxes)} images with {len(true_classes)} class lists"
        )
    if not sum(len(b) for b in true_boxes):
        raise DetectorError("no ground-truth boxes: mAP is undefined")
    annotations = []
    for image_id, (boxes, classes) in enumerate(zip(true_boxes, true_classes)):
        for xywh, c in zip(_xywh(boxes).tolist(), classes.tolist()):
            annotations.append(
                {
                    "id": len(annotations) + 1,  # pycocotools treats annotation id 0 as "unmatched"
                    "image_id": image_id,
                    "category_id": c,
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": 0,
                }
            )
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": [{"id": i} for i in range(len(true_boxes))],
        "annotations": annotations,
        "categories": [{"id": c, "name": name} for c, name in enumerate(class_names)],
    }
    rows = [
        np.column_stack([np.full(len(d.boxes), i), _xywh(d.boxes).numpy(), d.scores.numpy(), d.classes.numpy()])
        for i, d in enumerate(predictions)
        if len(d.boxes)
    ]
    if not rows:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
        detected = ground_truth.loadRes(np.concatenate(rows).astype(np.float64))
        evaluation = COCOeval(ground_truth, detected, iouType="bbox")
        evaluation.evaluate()
    return evaluation


def _xywh(boxes: Tensor) -> Tensor:
    boxes = boxes.detach().cpu().double().reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)


def _classes_with_ground_truth(true_classes: Sequence[Tensor]) -> list[int]:
    return sorted(set(torch.cat([c.reshape(-1).cpu() for c in true_classes]).tolist()))
