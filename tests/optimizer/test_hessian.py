"""OptimizeConfig.hypergradient.hessian_layers: the head-restricted Hessian is the full Hessian's
head block, its solve is the block system's, and the loop runs with it (u zero outside the head)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detector.losses import BatchNormMode, per_image_gradient_dot, trainable_parameters
from detector.model import DetectorConfig, build_detector
from detector.targets import ImageBatch
from optimizer.config import HypergradientConfig, OptimizeConfig
from optimizer.direction import inverse_hessian_direction
from optimizer.hessian import (
    exact_hvp,
    finite_difference_hvp,
    hessian_mask,
    kept,
    per_image_dots,
    per_image_dots_and_image_gradient,
    solve_direction,
    training_gradient,
)
from optimizer.hypergradient import hvp_from_gradients, mixed_grad_from_gradients
from optimizer.psi import OptimizerError


def _detector_and_batch():
    model = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["a", "b"], image_size=32, seed=1))
    g = torch.Generator().manual_seed(0)
    batch = ImageBatch(
        images=torch.rand(3, 3, 32, 32, generator=g),
        boxes=torch.tensor([[[2.0, 3.0, 20.0, 25.0]], [[8.0, 8.0, 30.0, 18.0]], [[0.0, 10.0, 12.0, 31.0]]]),
        classes=torch.tensor([[0], [1], [0]]),
        keep=torch.ones(3, 1, dtype=torch.bool),
    )
    return model, batch


def test_the_head_mask_marks_exactly_the_detect_heads_weights():
    model, _ = _detector_and_batch()
    mask = hessian_mask(model, "head")
    head = {id(p) for p in model.model[-1].parameters()}
    assert mask == [id(p) in head for p in trainable_parameters(model)]
    assert 0 < sum(mask) < len(mask)
    assert hessian_mask(model, "all") is None
    with pytest.raises(OptimizerError, match="hessian_layers"):
        hessian_mask(model, "neck")


def test_the_restricted_hessian_product_is_the_full_products_head_block():
    model, batch = _detector_and_batch()
    mode = BatchNormMode.BATCH
    parameters = trainable_parameters(model)
    mask = hessian_mask(model, "head")
    g = torch.Generator().manual_seed(1)
    vector = [torch.randn(p.shape, generator=g) if keep else torch.zeros_like(p) for p, keep in zip(parameters, mask)]

    full = hvp_from_gradients(training_gradient(model, batch.images, batch.targets(), mode, None)[0], parameters)(vector)
    restricted_grad, _ = training_gradient(model, batch.images, batch.targets(), mode, mask)
    assert all(not grad.requires_grad for grad, keep in zip(restricted_grad, mask) if not keep)
    kept = [p for p, keep in zip(parameters, mask) if keep]
    restricted = hvp_from_gradients([x for x, keep in zip(restricted_grad, mask) if keep], kept)(
        [v for v, keep in zip(vector, mask) if keep])

    expected = [x for x, keep in zip(full, mask) if keep]
    assert sum(float(x.abs().sum()) for x in expected) > 0
    for got, want in zip(restricted, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_the_restricted_solve_is_the_block_systems_solution_and_zero_elsewhere():
    # A quadratic training loss 0.5 theta' A theta over two parameter tensors: H = A exactly.
    g = torch.Generator().manual_seed(2)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    matrix = a @ a.T + 0.5 * torch.eye(5, dtype=torch.float64)
    model = nn.Module()
    model.first = nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))
    model.second = nn.Parameter(torch.randn(2, generator=g, dtype=torch.float64))
    theta = torch.cat([model.first, model.second])
    train_grad = list(torch.autograd.grad(0.5 * theta @ matrix @ theta, [model.first, model.second], create_graph=True))
    val_grad = [torch.randn(3, generator=g, dtype=torch.float64), torch.randn(2, generator=g, dtype=torch.float64)]
    damping = 0.1

    u = solve_direction(exact_hvp(model, train_grad, [True, False]), val_grad, [True, False], method="cg", steps=3,
                        damping=damping, scale=1.0, tolerance=0.0)
    block = matrix[:3, :3] + damping * torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(u[0], torch.linalg.solve(block, val_grad[0]))
    assert torch.equal(u[1], torch.zeros(2, dtype=torch.float64))

    everything = solve_direction(exact_hvp(model, train_grad, None), val_grad, None, method="cg", steps=5,
                                 damping=damping, scale=1.0, tolerance=0.0)
    exact = torch.linalg.solve(matrix + damping * torch.eye(5, dtype=torch.float64), torch.cat(val_grad))
    torch.testing.assert_close(torch.cat(everything), exact)


def test_the_loops_direction_with_the_head_hessian_is_zero_outside_the_head():
    model, batch = _detector_and_batch()
    parameters = trainable_parameters(model)
    mask = hessian_mask(model, "head")
    val_grad = [torch.full_like(p, 1e-3) for p in parameters]
    images = batch.images.clone().requires_grad_(True)
    config = OptimizeConfig(hypergradient=HypergradientConfig(hessian_layers="head", inverse_hessian="cg",
                                                              inverse_hessian_steps=3))
    u, train_grad, _, _ = inverse_hessian_direction(config, model, images, batch.targets(), val_grad)
    assert any(bool(x.any()) for x, keep in zip(u, mask) if keep)
    assert not any(bool(x.any()) for x, keep in zip(u, mask) if not keep)
    assert len(train_grad) == len(parameters)


def test_an_unknown_hessian_layers_value_is_refused_naming_the_setting():
    with pytest.raises(OptimizerError, match="OptimizeConfig.hypergradient.hessian_layers"):
        OptimizeConfig(hypergradient=HypergradientConfig(hessian_layers="backbone")).validate()


@pytest.mark.parametrize("layers", ["all", "head"])
def test_per_image_alignments_from_the_training_gradients_graph_equal_a_pass_of_their_own(layers):
    model, batch = _detector_and_batch()
    mode = BatchNormMode.BATCH
    mask = hessian_mask(model, layers)
    g = torch.Generator().manual_seed(3)
    parameters = trainable_parameters(model)
    kept = mask or [True] * len(parameters)
    vector = [torch.randn(p.shape, generator=g) if keep else torch.zeros_like(p) for p, keep in zip(parameters, kept)]
    images = batch.images.clone().requires_grad_(True)
    train_grad, weights = training_gradient(model, images, batch.targets(), mode, mask)
    reused = per_image_dots(train_grad, weights, vector)
    own = per_image_gradient_dot(model, batch.images, batch.targets(), vector, mode)
    assert own.abs().max() > 0
    torch.testing.assert_close(reused, own, rtol=1e-4, atol=1e-6)

    both, image_gradient = per_image_dots_and_image_gradient(train_grad, weights, vector, images)
    torch.testing.assert_close(both, reused)
    torch.testing.assert_close(image_gradient, mixed_grad_from_gradients(train_grad, images)(vector)[0])
    assert image_gradient.abs().max() > 0


def test_a_job_request_sets_hessian_layers_and_a_bad_value_is_refused_naming_it():
    from pydantic import ValidationError

    from service.job_fields import JobOptions, sectioned

    settings = JobOptions.model_validate({"hessian_layers": "head"}).loop_settings()
    assert OptimizeConfig.from_dict(sectioned(settings)).hypergradient.hessian_layers == "head"
    with pytest.raises(ValidationError, match="hessian_layers"):
        JobOptions.model_validate({"hessian_layers": "backbone"})


@pytest.mark.parametrize("layers", ["all", "head"])
def test_finite_difference_products_are_close_to_the_exact_ones_and_leave_the_weights_as_they_were(layers):
    model, batch = _detector_and_batch()
    mode = BatchNormMode.BATCH
    mask = hessian_mask(model, layers)
    parameters = trainable_parameters(model)
    before = [p.detach().clone() for p in parameters]
    g = torch.Generator().manual_seed(4)
    vector = [torch.randn(p.shape, generator=g) for p in kept(parameters, mask)]

    approximate = finite_difference_hvp(model, batch.images, batch.targets(), mode, mask)(vector)
    assert all(torch.equal(p, b) for p, b in zip(parameters, before))
    train_grad, _ = training_gradient(model, batch.images, batch.targets(), mode, mask)
    exact = exact_hvp(model, train_grad, mask)(vector)

    flat = lambda tensors: torch.cat([t.reshape(-1) for t in tensors])  # noqa: E731
    cosine = torch.nn.functional.cosine_similarity(flat(approximate), flat(exact), dim=0)
    assert cosine > 0.99
    assert 0.9 < flat(approximate).norm() / flat(exact).norm() < 1.1


def test_the_loops_direction_by_finite_differences_is_close_to_the_exact_one():
    model, batch = _detector_and_batch()
    images = batch.images.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(5)
    val_grad = [1e-2 * torch.randn(p.shape, generator=g) for p in trainable_parameters(model)]
    directions = {}
    for product in ("double-backward", "finite-difference"):
        config = OptimizeConfig(hypergradient=HypergradientConfig(hessian_product=product, inverse_hessian="cg",
                                                                  inverse_hessian_steps=2))
        u, _, _, fell_back = inverse_hessian_direction(config, model, images, batch.targets(), val_grad)
        assert not fell_back
        directions[product] = torch.cat([x.reshape(-1) for x in u])
    exact, approximate = directions["double-backward"], directions["finite-difference"]
    assert torch.nn.functional.cosine_similarity(exact, approximate, dim=0) > 0.99
    assert 0.85 < approximate.norm() / exact.norm() < 1.15


def test_a_run_saved_before_finite_differences_resumes_only_with_exact_products():
    import json

    saved = json.loads(json.dumps(OptimizeConfig().to_dict()))
    del saved["hypergradient"]["hessian_product"]
    assert OptimizeConfig().differences(saved) == []  # the default is exact, as such runs were
    approximate = OptimizeConfig(hypergradient=HypergradientConfig(hessian_product="finite-difference"))
    assert approximate.differences(saved) == ["hypergradient.hessian_product"]
