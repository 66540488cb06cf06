"""The starting psi from the validation photos: the priors match the boxes they came from, the
object's size is accounted for, thin or bad inputs fall back as documented, user overrides win,
and the loop starts from the priors and reports them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from detector.datasets import LabelledImage, LabelledSet
from optimizer.config import BudgetConfig, DetectorSection, OptimizeConfig, OuterConfig, PsiSettings
from optimizer.loop import _Loop, run_loop
from optimizer.priors import MIN_OFFSET_RANGE, apply_priors, derive_priors
from optimizer.psi import Psi, PsiConfig
from renderer.scene_renderer import SceneRenderer, SceneRendererConfig
from tests.optimizer.scenes import FacedBoxField, faced_box_renderer, target_set

Z90 = 1.2815515655446004


def two_sizes_renderer() -> SceneRenderer:
    """Class 0 a 6 x 4 x 3 cm box, class 1 the same box twice as large."""
    return SceneRenderer(SceneRendererConfig(samples_per_ray=16),
                         [FacedBoxField((0.03, 0.02, 0.015)), FacedBoxField((0.06, 0.04, 0.03))])


def quantiles(median: float, log_std: float) -> tuple[float, float]:
    return median * math.exp(-Z90 * log_std), median * math.exp(Z90 * log_std)


def test_the_priors_match_the_boxes_they_came_from(tmp_path: Path) -> None:
    truth = PsiConfig(offset_centre=(0.1, -0.15), offset_range=(0.15, 0.1))
    psi = Psi.from_target(truth, distance_median=0.5, distance_log_std=0.1)
    renderer = faced_box_renderer(16)
    photos = target_set(renderer, psi, 32, 64, tmp_path, ["box"], seed=2)

    priors = derive_priors(photos, ["box"], renderer, PsiConfig())

    (box,) = priors.classes
    assert (box.boxes, box.used) == (32, 32)
    # Distance: the median within 10%, the spread neither collapsed nor much wider than the truth,
    # and the q10..q90 range holds the true median with most of the true range.
    assert abs(math.log(box.distance_median / 0.5)) < 0.1
    assert 0.07 < box.distance_log_std < 0.15  # the views' share of the box-size spread is taken out
    lo, hi = quantiles(box.distance_median, box.distance_log_std)
    true_lo, true_hi = quantiles(0.5, 0.1)
    assert lo < 0.5 < hi
    assert min(hi, true_hi) - max(lo, true_lo) > 0.6 * (true_hi - true_lo)
    # Offsets: the derived range holds the true one (to a pixel of 64) and is not much wider.
    pixel = 2 / 64
    for axis in range(2):
        centre, half = priors.offset_centre[axis], priors.offset_range[axis]
        true_centre, true_half = truth.offset_centre[axis], truth.offset_range[axis]
        assert centre - half <= true_centre - true_half + pixel
        assert centre + half >= true_centre + true_half - pixel
        assert half <= 1.3 * true_half + pixel


def test_the_distance_follows_the_box_size_and_the_object_size(tmp_path: Path) -> None:
    renderer = two_sizes_renderer()
    config = PsiConfig(num_classes=2)
    near = target_set(renderer, Psi.from_target(config, distance_median=0.4, distance_log_std=0.05), 24, 64,
                      tmp_path / "near", ["small", "large"], seed=3)
    far = target_set(renderer, Psi.from_target(config, distance_median=0.8, distance_log_std=0.05), 24, 64,
                     tmp_path / "far", ["small", "large"], seed=3)

    near_priors = derive_priors(near, ["small", "large"], renderer, config)
    far_priors = derive_priors(far, ["small", "large"], renderer, config)

    for near_class, far_class in zip(near_priors.classes, far_priors.classes):
        # Boxes half the size: twice the distance.
        assert abs(math.log(far_class.distance_median / near_class.distance_median / 2)) < 0.12
    # The large object's boxes are twice the small one's at the same depth: the same distance.
    small, large = near_priors.classes
    assert abs(math.log(small.distance_median / 0.4)) < 0.12
    assert abs(math.log(large.distance_median / 0.4)) < 0.12


def _photo(boxes: list[list[float]], classes: list[int], width: int = 640, height: int = 480) -> LabelledImage:
    """A labelled photo for the priors, which read only sizes and boxes (no pixels)."""
    return LabelledImage(Path("unused.png"), width, height, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                         torch.tensor(classes, dtype=torch.long))


def test_a_class_without_boxes_gets_the_others_depth_and_truncated_boxes_are_left_out() -> None:
    renderer = two_sizes_renderer()
    photos = LabelledSet(
        [_photo([[200, 150, 260, 200]], [0]), _photo([[300, 200, 350, 240], [0, 100, 40, 200]], [0, 0])],
        ["small", "large"], Path("photos"),
    )

    priors = derive_priors(photos, ["small", "large"], renderer, PsiConfig(num_classes=2))

    small, large = priors.classes
    assert (small.boxes, small.used) == (3, 2)  # the box on the left border is truncated
    assert large.boxes == 0 and "no box" in large.note and "mean distance" in large.note
    assert large.distance_median == small.distance_median
    # Boxes in a 640 x 480 photo are measured in the letterboxed square (480 rows, 80 padded above).
    assert priors.offset_centre[1] > 0  # the boxes sit around rows 175..220 of 480, above the middle


def test_no_box_at_all_leaves_psi_as_configured() -> None:
    photos = LabelledSet([_photo([], [])], ["box"], Path("photos"))
    config = PsiConfig()

    priors = derive_priors(photos, ["box"], faced_box_renderer(16), config)
    applied, summary = apply_priors(config, priors, user_fields=())

    assert applied == config
    assert summary["applied"] == [] and "no labelled box" in summary["notes"][0]
    assert "no box" in summary["classes"][0]["note"]


def test_one_photo_gives_a_floor_on_the_offset_range_and_distance_spread() -> None:
    photos = LabelledSet([_photo([[300, 200, 360, 260]], [0])], ["box"], Path("photos"))

    priors = derive_priors(photos, ["box"], faced_box_renderer(16), PsiConfig())

    assert priors.offset_range == (MIN_OFFSET_RANGE, MIN_OFFSET_RANGE)
    assert priors.classes[0].distance_log_std == pytest.approx(0.1)


def test_user_overrides_win_over_the_priors_group_by_group() -> None:
    photos = LabelledSet([_photo([[300, 200, 360, 260], [100, 150, 130, 180]], [0, 0])], ["box"], Path("photos"))
    config = PsiConfig(distance_median=0.9)
    priors = derive_priors(photos, ["box"], faced_box_renderer(16), config)

    applied, summary = apply_priors(config, priors, user_fields={"distance_median"})

    assert applied.distance_median == 0.9 and applied.distance_log_std == PsiConfig.distance_log_std
    assert applied.offset_centre == priors.offset_centre and applied.offset_range == priors.offset_range
    assert summary["overridden_by_user"] == ["distance_log_std", "distance_median"]
    assert summary["applied"] == ["max_objects", "object_spacing", "offset_centre", "offset_range"]


def test_several_objects_keep_their_row_inside_the_image() -> None:
    # Every box at the far right: the row of 3 objects cannot be centred there.
    photos = LabelledSet([_photo([[600, 200, 630, 230], [590, 250, 620, 280]], [0, 0])], ["box"], Path("photos"))
    config = PsiConfig(max_objects=3, object_spacing=0.5)

    layout = {"max_objects", "object_spacing"}  # the user's: the offsets must fit their row
    priors = derive_priors(photos, ["box"], faced_box_renderer(16), config, user_fields=layout)
    applied, _ = apply_priors(config, priors, user_fields=layout)  # PsiConfig validates the placement

    assert applied.offset_centre[0] < 0.9 and "must stay inside the image" in priors.notes[0]


def test_the_loop_starts_from_the_priors_unless_turned_off(tmp_path: Path) -> None:
    renderer = faced_box_renderer(16)
    truth = Psi.from_target(PsiConfig(), distance_median=0.3, distance_log_std=0.1)
    photos = target_set(renderer, truth, 12, 48, tmp_path / "val", ["box"], seed=4)

    def loop(**psi) -> _Loop:
        config = OptimizeConfig(detector=DetectorSection(image_size=32), psi=PsiSettings(**psi))
        return _Loop(config, renderer, ["box"], photos, None, tmp_path / "run", None, None, False)

    with_priors = loop()
    psi = Psi(with_priors.psi_config)
    assert abs(psi.distance_loc.exp().item() / 0.3 - 1) < 0.15
    assert with_priors.priors["applied"] == ["distance_log_std", "distance_median", "offset_centre", "offset_range"]
    assert with_priors.priors["values"]["distance_median"] == [with_priors.psi_config.distance_median[0]]

    without = loop(priors=False)
    assert without.priors is None and without.psi_config.distance_median == PsiConfig.distance_median

    user = loop(initial={"distance_median": 0.7})
    assert user.psi_config.distance_median == 0.7 and user.priors["overridden_by_user"] == [
        "distance_log_std", "distance_median"]

    config = OptimizeConfig(outer=OuterConfig(method="uniform"),
                            budget=BudgetConfig(outer_iterations=1, images_per_iteration=2, inner_steps=1, final_images=0),
                            detector=DetectorSection(warmup_steps=0, image_size=32, val_map_every=0, sample_images=0))
    result = run_loop(config,
                      renderer, ["box"], photos, None, tmp_path / "report", progress_bar=False)
    report = json.loads(result.report.read_text())
    assert report["priors"]["values"] == with_priors.priors["values"]
    assert report["psi"]["distance_m"]["median"] == pytest.approx(with_priors.priors["values"]["distance_median"], rel=1e-5)


def test_a_few_box_centres_widen_to_the_range_they_were_drawn_from() -> None:
    # Centres at x = -0.4, 0, 0.4 image half-sizes: three uniform draws fall short of their
    # range's ends by a quarter of it on average, so each side widens by (max - min) / 2.
    photos = LabelledSet([_photo([[x - 20, 180, x + 20, 220]], [0], 400, 400) for x in (120, 200, 280)],
                         ["box"], Path("photos"))

    priors = derive_priors(photos, ["box"], faced_box_renderer(16), PsiConfig())

    assert priors.offset_centre == pytest.approx((0.0, 0.0))
    assert priors.offset_range == pytest.approx((0.8, MIN_OFFSET_RANGE))


def test_the_layout_matches_the_boxes_it_came_from() -> None:
    """Photos with 1, 3 and 2 boxes: three object slots, spaced at 0.85 of the median box width
    (in image half-sizes of the letterboxed 640 px square), so neighbours overlap a little."""
    widths = [64, 96, 128, 160, 192, 224]  # 0.2 .. 0.7 half-sizes; median 0.45
    boxes = [[20 + i * 60, 200, 20 + i * 60 + w, 300] for i, w in enumerate(widths)]
    photos = LabelledSet([_photo(boxes[:1], [0]), _photo(boxes[1:4], [0] * 3), _photo(boxes[4:], [0] * 2)],
                         ["box"], Path("photos"))

    priors = derive_priors(photos, ["box"], faced_box_renderer(16), PsiConfig())
    applied, summary = apply_priors(PsiConfig(), priors, user_fields=())

    assert applied.max_objects == 3
    assert applied.object_spacing == pytest.approx(0.85 * (128 + 160) / 2 / 320, abs=1e-4)
    assert summary["values"]["max_objects"] == 3 and "object_spacing" in summary["applied"]
    # Neighbours of the median width overlap: their centres are closer than their width.
    assert applied.object_spacing < (128 + 160) / 2 / 320
    user, summary = apply_priors(PsiConfig(), priors, user_fields={"max_objects"})
    assert user.max_objects == 1 and summary["overridden_by_user"] == ["max_objects", "object_spacing"]


def test_crowded_photos_give_at_most_four_slots_in_a_row_that_fits_the_image() -> None:
    boxes = [[10 + 90 * i, 200, 10 + 90 * i + 300, 260] for i in range(4)] + [[20, 300, 620, 400]] * 3
    photos = LabelledSet([_photo(boxes, [0] * len(boxes))], ["box"], Path("photos"))

    priors = derive_priors(photos, ["box"], faced_box_renderer(16), PsiConfig())
    applied, _ = apply_priors(PsiConfig(), priors, user_fields=())  # PsiConfig validates the row

    assert applied.max_objects == 4
    assert applied.object_spacing * 1.5 + applied.object_spacing / 4 <= 0.95 + 1e-4
    scene = Psi(applied).sample(200, 0).scene
    assert scene.offset[..., 0].abs().max() < 1  # every centre inside the image


def test_a_single_object_per_photo_keeps_the_configured_layout() -> None:
    photos = LabelledSet([_photo([[300, 200, 360, 260]], [0]), _photo([[100, 200, 160, 260]], [0])], ["box"], Path("p"))
    priors = derive_priors(photos, ["box"], faced_box_renderer(16), PsiConfig(max_objects=2))
    assert priors.max_objects is None and "max_objects" not in priors.overrides()
