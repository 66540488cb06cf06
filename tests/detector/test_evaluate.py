import pytest
import torch

from detector.errors import DetectorError
from detector.evaluate import Detections, evaluate_predictions

CLASS_NAMES = ["red", "blue"]
TRUE_BOXES = [
    torch.tensor([[10.0, 10.0, 30.0, 40.0], [40.0, 5.0, 60.0, 20.0]]),
    torch.tensor([[0.0, 0.0, 16.0, 16.0]]),
    torch.tensor([[20.0, 30.0, 50.0, 60.0]]),
]
TRUE_CLASSES = [torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([0])]


def _detections(boxes, classes, scores=None):
    return Detections(boxes, torch.full((len(boxes),), 0.9) if scores is None else scores, classes)


def test_perfect_predictions_give_map_one():
    predictions = [_detections(b, c) for b, c in zip(TRUE_BOXES, TRUE_CLASSES)]

    metrics = evaluate_predictions(predictions, TRUE_BOXES, TRUE_CLASSES, CLASS_NAMES)

    assert metrics.map50_95 == pytest.approx(1.0)
    assert metrics.map50 == pytest.approx(1.0)
    assert metrics.per_class_ap == pytest.approx({"red": 1.0, "blue": 1.0})


def test_shifted_predictions_give_less():
    slightly = [_detections(b + torch.tensor([2.0, 0.0, 2.0, 0.0]), c) for b, c in zip(TRUE_BOXES, TRUE_CLASSES)]
    far = [_detections(b + torch.tensor([8.0, 0.0, 8.0, 0.0]), c) for b, c in zip(TRUE_BOXES, TRUE_CLASSES)]

    slight_metrics = evaluate_predictions(slightly, TRUE_BOXES, TRUE_CLASSES, CLASS_NAMES)
    far_metrics = evaluate_predictions(far, TRUE_BOXES, TRUE_CLASSES, CLASS_NAMES)

    assert slight_metrics.map50 == pytest.approx(1.0)  # every shifted box still overlaps by IoU > 0.5
    assert far_metrics.map50_95 < slight_metrics.map50_95 < 1.0
    assert far_metrics.map50 < 1.0


def test_wrong_class_and_missed_boxes_lower_that_class_only():
    predictions = [_detections(b, c) for b, c in zip(TRUE_BOXES, TRUE_CLASSES)]
    predictions[1] = _detections(TRUE_BOXES[1], torch.tensor([0]))  # the blue square called red

    metrics = evaluate_predictions(predictions, TRUE_BOXES, TRUE_CLASSES, CLASS_NAMES)

    # One of two blue boxes found, at full precision: precision 1 at 51 of COCO's 101 recall points.
    assert metrics.per_class_ap["blue"] == pytest.approx(51 / 101)
    assert metrics.per_class_ap["red"] < 1.0  # a false positive ranks level with the true ones


def test_confident_false_positives_rank_above_true_ones():
    predictions = [_detections(b, c) for b, c in zip(TRUE_BOXES, TRUE_CLASSES)]
    decoy = _detections(torch.tensor([[0.0, 40.0, 10.0, 60.0]]), torch.tensor([0]), torch.tensor([0.99]))
    predictions[0] = Detections(
        torch.cat([predictions[0].boxes, decoy.boxes]),
        torch.cat([predictions[0].scores, decoy.scores]),
        torch.cat([predictions[0].classes, decoy.classes]),
    )

    metrics = evaluate_predictions(predictions, TRUE_BOXES, TRUE_CLASSES, CLASS_NAMES)

    assert metrics.per_class_ap["blue"] == pytest.approx(1.0)
    assert metrics.per_class_ap["red"] < 0.8


def test_no_predictions_give_zero_and_no_ground_truth_is_refused():
    empty = [_detections(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) for _ in TRUE_BOXES]

    assert evaluate_predictions(empty, TRUE_BOXES, TRUE_CLASSES, CLASS_NAMES).map50_95 == 0.0
    with pytest.raises(DetectorError, match="no ground-truth boxes"):
        evaluate_predictions(empty, [torch.zeros(0, 4)] * 3, [torch.zeros(0, dtype=torch.long)] * 3, CLASS_NAMES)


def test_a_resample_scores_as_the_set_holding_those_images_would():
    """resampled_map50_95 re-accumulates one matching: the whole set in order gives
    evaluate_predictions' mAP50-95, and a resample with repeats gives that of a set in which
    each drawn image appears as often (the bootstrap of optimizer.uniform_baseline)."""
    from detector.evaluate import resampled_map50_95

    shifted = [_detections(b + torch.tensor([3.0, 2.0, 3.0, 2.0]) * (i + 1), c, torch.tensor([0.9, 0.4][: len(b)]))
               for i, (b, c) in enumerate(zip(TRUE_BOXES, TRUE_CLASSES))]
    whole = evaluate_predictions(shifted, TRUE_BOXES, TRUE_CLASSES, CLASS_NAMES).map50_95
    rows = [[0, 1, 2], [0, 0, 2], [1, 1, 1], [2, 0, 1, 1]]
    scores = resampled_map50_95(shifted, TRUE_BOXES, TRUE_CLASSES, CLASS_NAMES, rows)
    assert scores[0] == pytest.approx(whole)
    for chosen, score in zip(rows, scores):
        expected = evaluate_predictions([shifted[i] for i in chosen], [TRUE_BOXES[i] for i in chosen],
                                        [TRUE_CLASSES[i] for i in chosen], CLASS_NAMES).map50_95
        assert score == pytest.approx(expected)
    none = [Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))] * 3
    assert resampled_map50_95(none, TRUE_BOXES, TRUE_CLASSES, CLASS_NAMES, rows) == [0.0] * 4
