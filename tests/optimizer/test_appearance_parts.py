"""The appearance objective's features and score-function gradients for every part of psi
(optimizer.appearance_parts), checked against exact gradients on tiny cases."""

from __future__ import annotations

import pytest
import torch

from detector.datasets import LETTERBOX_FILL
from detector.targets import ImageBatch
from optimizer.appearance_parts import (
    EXACT_PARTS,
    PART_FEATURES,
    SceneFeatures,
    appearance_part_gradients,
    enumerated_bin_weights,
    exact_part_gradients,
    feature_bandwidths,
    multiscale_kernel,
    scene_features,
)
from optimizer.psi import PARTS, OptimizerError, Psi, PsiConfig

PROTOTYPES = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.2]])
"""The context feature of each of three backgrounds."""


def _only(*parts: str, **config) -> Psi:
    """A psi whose ``parts`` alone are learnable."""
    return Psi(PsiConfig(**config, **{f"learn_{part}": part in parts for part in PARTS}))


def _features(context: torch.Tensor, classes: torch.Tensor, **objects: torch.Tensor) -> SceneFeatures:
    """One object per image: image context features, object classes and object groups."""
    count = classes.numel()
    return SceneFeatures(objects=objects, classes=classes, rows=torch.arange(count), images={"context": context},
                         counts=torch.ones(count, dtype=torch.long))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_every_part_has_feature_groups() -> None:
    assert set(PART_FEATURES) | EXACT_PARTS == set(PARTS) and not set(PART_FEATURES) & EXACT_PARTS


def test_background_gradient_matches_the_exact_mmd_gradient_and_the_class_mix_has_it() -> None:
    """Backgrounds drawn from psi: the score-function estimate over 3000 images equals the
    gradient of the exact MMD^2 (enumerated over the choices) within sampling error; the class
    mix's and the count's gradients are exact (no images), and the score function skips them."""
    psi = _only("background", "class_mix", num_classes=2, num_backgrounds=3, plain_background=False)
    with torch.no_grad():
        psi.background_logits.copy_(torch.tensor([0.3, -0.2, 0.5]))
        psi.class_logits.copy_(torch.tensor([0.4, -0.1]))
    noise = psi.sample(3000, 0).noise
    classes = noise.class_ids[:, 0]
    features = _features(PROTOTYPES[noise.background_ids], classes)
    val_backgrounds = torch.tensor([0] * 20 + [2] * 10)
    val_classes = torch.tensor([1] * 21 + [0] * 9)
    val = _features(PROTOTYPES[val_backgrounds], val_classes)
    found = appearance_part_gradients(psi, noise, features, val, {"context": 1.0}, {"background", "class_mix"},
                                      scenes=torch.arange(3000))
    assert set(found) == {"appearance_mmd_context"} and psi.class_logits.grad is None
    found = exact_part_gradients(psi, val, {"background", "class_mix"})
    assert set(found) == {"appearance_mmd_class_mix"}

    logits = psi.background_logits.detach().clone().requires_grad_(True)
    p = logits.softmax(0)
    kernel = multiscale_kernel(PROTOTYPES, PROTOTYPES, 1.0)
    to_val = multiscale_kernel(PROTOTYPES, PROTOTYPES[val_backgrounds], 1.0).mean(1)
    (p @ kernel @ p - 2 * p @ to_val).backward()
    class_logits = psi.class_logits.detach().clone().requires_grad_(True)
    pc, qc = class_logits.softmax(0), torch.tensor([9 / 30, 21 / 30])
    ((pc - qc) ** 2).sum().backward()
    torch.testing.assert_close(psi.class_logits.grad, class_logits.grad)
    estimate, exact = psi.background_logits.grad, logits.grad
    assert _cosine(estimate, exact) > 0.98, (estimate, exact)
    torch.testing.assert_close(estimate, exact, atol=0.15 * float(exact.norm()), rtol=0)

    counted = _only("count", max_objects=3)
    val.counts = torch.tensor([1] * 20 + [2] * 6 + [5] * 4)  # 5 objects count as the most psi draws, 3
    exact_part_gradients(counted, val, {"count"})
    count_logits = counted.count_logits.detach().clone().requires_grad_(True)
    ((count_logits.softmax(0) - torch.tensor([20, 6, 4]) / 30) ** 2).sum().backward()
    torch.testing.assert_close(counted.count_logits.grad, count_logits.grad)


def test_distance_gradient_matches_a_finite_difference_of_the_mmd() -> None:
    """A continuous part drawn per class, two classes of different sizes: the box size's log is
    the class's log size minus the log distance; the score-function estimate of d MMD^2 /
    d (each class's distance loc and log scale) matches central differences of the MMD^2 of
    reparameterised draws (the same noise and classes at both ends)."""
    psi = _only("distance", num_classes=2, distance_median=0.6, distance_log_std=0.3)
    noise = psi.sample(4000, 1).noise
    object_size = torch.tensor([0.0, 1.0])
    generator = torch.Generator().manual_seed(2)
    val_classes = torch.tensor([0, 1] * 20)
    val_sizes = (object_size[val_classes] - torch.log(torch.tensor([0.35, 0.8]))[val_classes]
                 + 0.1 * torch.randn(40, generator=generator))[:, None]
    val = _features(torch.zeros(40, 6), val_classes, size=val_sizes)
    classes = noise.class_ids[:, 0]
    features = _features(torch.zeros(4000, 6), classes, size=(object_size[classes] - noise.log_distance[:, 0])[:, None])
    appearance_part_gradients(psi, noise, features, val, {"size": 0.3}, {"distance"}, scenes=torch.arange(4000))

    draws = torch.randn(3000, generator=torch.Generator().manual_seed(3))
    drawn = torch.randint(0, 2, (3000,), generator=torch.Generator().manual_seed(4))
    same = (drawn[:, None] == drawn[None, :]).float()
    to_val_class = (drawn[:, None] == val_classes[None, :]).float()

    def mmd(loc: torch.Tensor, log_scale: torch.Tensor) -> float:
        sizes = (object_size[drawn] - (loc[drawn] + log_scale[drawn].exp() * draws))[:, None]
        return float((multiscale_kernel(sizes, sizes, 0.3) * same).mean()
                     - 2 * (multiscale_kernel(sizes, val_sizes, 0.3) * to_val_class).mean())

    loc, log_scale, step = psi.distance_loc.detach(), psi.distance_log_scale.detach(), 1e-3
    exact = []
    for index in range(4):
        shift = torch.zeros(4)
        shift[index] = step
        up, down = mmd(loc + shift[:2], log_scale + shift[2:]), mmd(loc - shift[:2], log_scale - shift[2:])
        exact.append((up - down) / (2 * step))
    exact = torch.tensor(exact)
    estimate = torch.cat([psi.distance_loc.grad, psi.distance_log_scale.grad])
    assert exact[0] > 0 > exact[1]  # class 0's photos are nearer than psi's start, class 1's further
    assert _cosine(estimate, exact) > 0.97, (estimate, exact)
    torch.testing.assert_close(estimate, exact, atol=0.2 * float(exact.norm()), rtol=0)


def test_images_of_one_scene_are_never_paired_and_weights_reweigh_the_bins() -> None:
    """The witness's psi term uses other scenes only: two scenes of identical images give the
    same gradient whether each scene holds one image or four copies; a weight of 0 on an
    image removes it (as enumerated bins psi never draws)."""
    psi = _only("background", num_backgrounds=3, plain_background=False)
    noise = psi.sample(8, 4).noise
    features = _features(PROTOTYPES[noise.background_ids], noise.class_ids[:, 0])
    val = _features(PROTOTYPES[torch.tensor([0, 0, 1])], torch.zeros(3, dtype=torch.long))
    bandwidths = {"context": 1.0}
    appearance_part_gradients(psi, noise, features, val, bandwidths, {"background"}, scenes=torch.arange(8))
    alone = psi.background_logits.grad.clone()
    psi.background_logits.grad = None
    weights = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    appearance_part_gradients(psi, noise, features, val, bandwidths, {"background"}, scenes=torch.arange(8),
                              weights=weights)
    seven = psi.background_logits.grad.clone()
    psi.background_logits.grad = None
    appearance_part_gradients(psi, noise.index(slice(0, 7)), _features(features.images["context"][:7],
                              features.classes[:7]), val, bandwidths, {"background"}, scenes=torch.arange(7))
    torch.testing.assert_close(psi.background_logits.grad, seven)
    assert not torch.allclose(seven, alone)
    psi.background_logits.grad = None
    repeated = noise.index(torch.arange(8).repeat_interleave(4))
    four = _features(features.images["context"].repeat_interleave(4, 0), features.classes.repeat_interleave(4))
    appearance_part_gradients(psi, repeated, four, val, bandwidths, {"background"},
                              scenes=torch.arange(8).repeat_interleave(4))
    torch.testing.assert_close(psi.background_logits.grad, alone)
    with pytest.raises(OptimizerError, match="unknown parts"):
        appearance_part_gradients(psi, noise, features, val, bandwidths, {"roll"}, scenes=torch.arange(8))


def test_enumerated_bin_weights_are_k_times_psis_bin_probability() -> None:
    psi = _only("azimuth", azimuth_bins=4)
    with torch.no_grad():
        psi.azimuth_logits.copy_(torch.tensor([[2.0, 0.0, 0.0, -1.0]]))
    noise = psi.sample(4, 0).noise
    noise.azimuth_bin[:] = torch.arange(4)[:, None]
    torch.testing.assert_close(enumerated_bin_weights(psi, noise), 4 * psi.azimuth_probs().detach()[0])


def test_features_keep_size_colour_and_the_background() -> None:
    """Features of two images: the same plain object, twice as large and half as bright in the
    second, on another background; letterbox padding is left out of the context."""
    images = torch.full((2, 3, 32, 32), 0.2)
    images[1, 0] = 0.6  # a red background
    images[0, :, 8:16, 8:16] = torch.tensor([0.8, 0.4, 0.2])[:, None, None]
    images[1, :, 4:20, 4:20] = torch.tensor([0.4, 0.2, 0.1])[:, None, None]
    images[0, :, 28:] = LETTERBOX_FILL
    boxes = torch.tensor([[[8.0, 8.0, 16.0, 16.0]], [[4.0, 4.0, 20.0, 20.0]]])
    features = scene_features(ImageBatch(images, boxes, torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool)))
    size, colour = features.objects["size"], features.objects["colour"]
    torch.testing.assert_close(size[1] - size[0], torch.full((2,), 0.6931), atol=1e-3, rtol=0)
    torch.testing.assert_close(colour[0] - colour[1], torch.full((3,), 0.6931), atol=1e-3, rtol=0)
    torch.testing.assert_close(features.images["context"][0], torch.tensor([0.2, 0.2, 0.2] + [0.0] * 7))
    torch.testing.assert_close(features.images["context"][1], torch.tensor([0.6, 0.2, 0.2] + [0.0] * 7))
    images[1, :, :, ::2] += 0.1  # stripes down the background: texture across, none down
    texture = scene_features(ImageBatch(images, boxes, torch.zeros(2, 1, dtype=torch.long),
                                        torch.ones(2, 1, dtype=torch.bool))).images["context"][1, 6:]
    torch.testing.assert_close(texture, torch.tensor([0.1, 0.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    assert features.counts.tolist() == [1, 1]
    bandwidths = feature_bandwidths(features)
    assert bandwidths["size"] == pytest.approx(0.6931 * 2 ** 0.5, abs=1e-3) and bandwidths["context"].shape == (10,)
    with pytest.raises(OptimizerError, match="at least 2 validation objects"):
        feature_bandwidths(_features(torch.zeros(1, 6), torch.zeros(1, dtype=torch.long)))
