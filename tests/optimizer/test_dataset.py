"""The final dataset's per-image metadata: what was drawn for each labelled object."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from optimizer.dataset import image_meta
from renderer.scene_types import SceneParams
from tests.optimizer.scenes import faced_box_renderer


@pytest.mark.parametrize("appearance_ids", [None, [[3, -1]]])
def test_image_meta_records_pose_lighting_and_appearance_per_object(appearance_ids) -> None:
    params = SceneParams.single([0, 0], [30.0, 300.0], [20.0, 10.0], [0.4, 0.5], offset=[(-0.3, 0.0), (0.3, 0.0)])
    batch = faced_box_renderer().render(params, 32)
    assert batch.keep[0].all()  # both boxes are labelled
    if appearance_ids is not None:
        params = dataclasses.replace(params, appearance_ids=torch.tensor(appearance_ids))
    meta = image_meta(params, batch, 0)
    assert meta["azimuth_deg"] == pytest.approx([30.0, 300.0], abs=1e-3)
    assert meta["distance"] == pytest.approx([0.4, 0.5])
    assert meta["appearance_id"] == (appearance_ids[0] if appearance_ids else [-1, -1])
