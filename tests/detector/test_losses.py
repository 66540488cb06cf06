"""Derivatives of the detection loss against central finite differences, in float64.

The assignment is frozen (FrozenAssignment) for the finite differences, as the derivatives
treat it as fixed; without that they differ by up to 100 % (the assignment and its soft
target scores move with the images and weights). One more constant remains:
Ultralytics computes the CIoU trade-off weight alpha under no_grad, which shifts the
derivatives by a small absolute amount. Checks are therefore made where cancellation cannot
blow that up into a large relative error: a derivative G is checked along G itself (the
finite difference must equal G . G, up to scale), a Hessian-vector product as a whole vector.
The loss is only piecewise smooth (CIoU takes min / max of predicted and target box edges),
hence the small steps: large enough for float64, too small to cross a kink.
"""

import pytest
import torch

from detector.losses import (
    BatchNormMode,
    FrozenAssignment,
    batch_norm_mode,
    detection_loss,
    hessian_vector_product,
    image_gradient_of_dot,
    parameter_gradient,
    per_image_gradient_dot,
    trainable_parameters,
)
from detector.model import DetectorConfig, build_detector
from detector.targets import select_targets, targets_from_boxes
from tests.detector.rectangles import rectangle_images

SIZE = 64
IMAGE_STEP = 1e-8
PARAMETER_STEP = 1e-9
"""Smaller: a step along all weights at once moves the predictions much more than one along all pixels."""
RELATIVE_TOLERANCE = 1e-2


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # Ultralytics' loss allocates its buffers in the default dtype
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def problem(float64, generator):
    """A tiny model with populated running statistics, two images and their targets."""
    model = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["red", "blue"], image_size=SIZE)).double()
    images, boxes, classes, keep = rectangle_images(2, SIZE, generator)
    targets = targets_from_boxes(boxes, classes, keep, SIZE)
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for layer in batch_norms:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average: the running statistics become those of the images
    with torch.no_grad():
        detection_loss(model, images.double(), targets, BatchNormMode.UPDATE)
    for layer in batch_norms:
        layer.momentum = 0.03
    return model, images.double(), targets


def _dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b))


def _central_difference(function, step):
    return (function(step) - function(-step)) / (2 * step)


def _unit_rms(tensors):
    """The derivative tensors scaled to a root-mean-square entry of 1: a direction to step along."""
    rms = (sum(t.square().sum() for t in tensors) / sum(t.numel() for t in tensors)).sqrt()
    return [t / rms for t in tensors]


def _assert_directional_derivative(derivative, direction, numerical):
    """The finite difference along a direction parallel to the derivative must be their dot product (> 0)."""
    analytic = _dot(derivative, direction).item()
    assert analytic > 1e-6, "the derivative should not vanish"
    assert abs(analytic - numerical) <= RELATIVE_TOLERANCE * analytic, (analytic, numerical)


def _at_shifted_parameters(model, shift, step, function):
    """function() evaluated with the trainable parameters moved by step * shift."""
    parameters = trainable_parameters(model)
    with torch.no_grad():
        for p, s in zip(parameters, shift):
            p.add_(step * s)
    try:
        return function()
    finally:
        with torch.no_grad():
            for p, s in zip(parameters, shift):
                p.sub_(step * s)


@pytest.mark.parametrize("bn_mode", [BatchNormMode.BATCH, BatchNormMode.RUNNING])
def test_image_gradient_matches_finite_differences(problem, bn_mode):
    model, images, targets = problem
    frozen = FrozenAssignment()
    images_with_grad = images.clone().requires_grad_(True)
    loss = detection_loss(model, images_with_grad, targets, bn_mode, frozen=frozen)
    (gradient,) = torch.autograd.grad(loss, images_with_grad)
    (direction,) = _unit_rms([gradient])

    with torch.no_grad():
        numerical = _central_difference(
            lambda h: detection_loss(model, images + h * direction, targets, bn_mode, frozen=frozen), IMAGE_STEP
        )

    _assert_directional_derivative([gradient], [direction], numerical.item())


@pytest.mark.parametrize("bn_mode", [BatchNormMode.BATCH, BatchNormMode.RUNNING])
def test_mixed_second_derivative_matches_finite_differences(problem, generator, bn_mode):
    model, images, targets = problem
    frozen = FrozenAssignment()
    vector = [torch.randn(p.shape, generator=generator) for p in trainable_parameters(model)]

    mixed = image_gradient_of_dot(model, images, targets, vector, bn_mode, frozen=frozen)
    (direction,) = _unit_rms([mixed])

    def vector_dot_gradient_at(h):
        return _dot(parameter_gradient(model, images + h * direction, targets, bn_mode, frozen=frozen), vector)

    assert mixed.shape == images.shape
    _assert_directional_derivative([mixed], [direction], _central_difference(vector_dot_gradient_at, IMAGE_STEP).item())


def test_parameter_gradient_matches_finite_differences(problem):
    model, images, targets = problem
    frozen = FrozenAssignment()
    gradient = parameter_gradient(model, images, targets, BatchNormMode.BATCH, frozen=frozen)
    direction = _unit_rms(gradient)

    def loss_at(h):
        with torch.no_grad():
            return _at_shifted_parameters(
                model, direction, h, lambda: detection_loss(model, images, targets, BatchNormMode.BATCH, frozen=frozen)
            )

    _assert_directional_derivative(gradient, direction, _central_difference(loss_at, PARAMETER_STEP).item())


@pytest.mark.parametrize("bn_mode", [BatchNormMode.BATCH, BatchNormMode.RUNNING])
def test_hessian_vector_product_matches_finite_differences_of_gradients(problem, generator, bn_mode):
    model, images, targets = problem
    frozen = FrozenAssignment()
    vector = [torch.randn(p.shape, generator=generator) for p in trainable_parameters(model)]

    product = hessian_vector_product(model, images, targets, vector, bn_mode, frozen=frozen)

    def gradient_at(h):
        return _at_shifted_parameters(
            model, vector, h, lambda: parameter_gradient(model, images, targets, bn_mode, frozen=frozen)
        )

    numerical = [
        (plus - minus) / (2 * PARAMETER_STEP)
        for plus, minus in zip(gradient_at(PARAMETER_STEP), gradient_at(-PARAMETER_STEP))
    ]
    error = sum((a - n).square().sum() for a, n in zip(product, numerical)).sqrt()
    size = sum(n.square().sum() for n in numerical).sqrt()
    assert size > 1e-6
    assert error <= RELATIVE_TOLERANCE * size, (error.item(), size.item())


def test_per_image_losses_are_the_trainer_loss_of_each_image_alone(problem):
    model, images, targets = problem

    losses = detection_loss(model, images, targets, BatchNormMode.RUNNING, reduction="none")

    assert losses.shape == (2,)
    with batch_norm_mode(model, BatchNormMode.RUNNING):
        for i in range(2):
            batch = {"img": images[i : i + 1], **select_targets(targets, torch.tensor([i]))}
            ultralytics_loss, _ = model.loss(batch)
            torch.testing.assert_close(losses[i], ultralytics_loss.sum())
    mean = detection_loss(model, images, targets, BatchNormMode.RUNNING)
    total = detection_loss(model, images, targets, BatchNormMode.RUNNING, reduction="sum")
    torch.testing.assert_close(mean, losses.mean())
    torch.testing.assert_close(total, losses.sum())


def test_per_image_gradient_dots_match_one_backward_per_image(problem, generator):
    model, images, targets = problem
    parameters = trainable_parameters(model)
    vector = [torch.randn(p.shape, generator=generator) for p in parameters]

    dots = per_image_gradient_dot(model, images, targets, vector, BatchNormMode.BATCH)

    losses = detection_loss(model, images, targets, BatchNormMode.BATCH, reduction="none")
    for i in range(2):
        gradient = torch.autograd.grad(losses[i], parameters, retain_graph=True, allow_unused=True)
        expected = sum((g * v).sum() for g, v in zip(gradient, vector) if g is not None)
        torch.testing.assert_close(dots[i], expected)


def _running_statistics(model):
    return [b.clone() for name, b in model.named_buffers() if "running" in name or "num_batches" in name]


@pytest.mark.parametrize("bn_mode", [BatchNormMode.BATCH, BatchNormMode.RUNNING])
def test_batch_and_running_modes_leave_running_statistics_and_flags_untouched(problem, bn_mode):
    model, images, targets = problem
    model.eval()
    before = _running_statistics(model)
    vector = [torch.ones_like(p) for p in trainable_parameters(model)]

    detection_loss(model, images, targets, bn_mode).backward()
    hessian_vector_product(model, images, targets, vector, bn_mode)
    image_gradient_of_dot(model, images, targets, vector, bn_mode)

    assert all(torch.equal(a, b) for a, b in zip(before, _running_statistics(model)))
    assert not any(m.training for m in model.modules())


def test_update_mode_moves_running_statistics_and_modes_differ(problem):
    model, images, targets = problem
    before = _running_statistics(model)
    with torch.no_grad():
        batch_loss = detection_loss(model, images, targets, BatchNormMode.BATCH)
        running_loss = detection_loss(model, images, targets, BatchNormMode.RUNNING)
        update_loss = detection_loss(model, images, targets, BatchNormMode.UPDATE)

    assert not all(torch.equal(a, b) for a, b in zip(before, _running_statistics(model)))
    assert update_loss == batch_loss  # same batch statistics for the forward pass itself
    assert running_loss != batch_loss


def test_images_without_boxes_have_a_finite_loss_and_gradients(problem):
    model, images, targets = problem
    no_boxes = {key: value[:0] for key, value in targets.items()}
    vector = [torch.ones_like(p) for p in trainable_parameters(model)]

    losses = detection_loss(model, images, no_boxes, BatchNormMode.BATCH, reduction="none")
    mixed = image_gradient_of_dot(model, images, no_boxes, vector, BatchNormMode.BATCH)

    assert torch.isfinite(losses).all() and (losses > 0).all()  # the class scores are pushed down
    assert torch.isfinite(mixed).all() and mixed.abs().sum() > 0


def test_end_to_end_checkpoints_use_both_heads_and_freeze_both_assignments(tmp_path, generator):
    from ultralytics.nn.tasks import DetectionModel

    from detector.model import save_detector

    yolo26 = DetectionModel("yolo26n.yaml", nc=2, verbose=False)
    yolo26.names = {0: "red", 1: "blue"}
    weights = save_detector(yolo26, tmp_path / "yolo26n.pt")
    model = build_detector(DetectorConfig(class_names=["red", "blue"], image_size=SIZE, weights=weights))
    images, boxes, classes, keep = rectangle_images(2, SIZE, generator)
    targets = targets_from_boxes(boxes, classes, keep, SIZE)
    frozen = FrozenAssignment()

    loss = detection_loss(model, images, targets, BatchNormMode.BATCH, frozen=frozen)
    product = hessian_vector_product(
        model, images, targets, [torch.ones_like(p) for p in trainable_parameters(model)], BatchNormMode.BATCH, frozen
    )

    assert len(frozen) == 2 * 2  # (one-to-many, one-to-one) x images
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in product)
