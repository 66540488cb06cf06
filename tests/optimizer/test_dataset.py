"""The final dataset's per-image metadata: what was drawn for each labelled object."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.datasets import DatasetWriter
from optimizer.dataset import image_meta, render_dataset
from optimizer.psi import OptimizerError, Psi, PsiConfig
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


def test_render_dataset_with_strata_holds_each_stratum_in_equal_shares(tmp_path) -> None:
    config = PsiConfig(num_classes=1, plain_background=True)
    strata = [Psi.from_target(config, azimuth_bin_probs=[float(k == b) for k in range(8)]) for b in (2, 3)]
    out = render_dataset(faced_box_renderer(8), strata, 7, 16, tmp_path / "stratified", ["box"], progress=False)
    images = json.loads((out / "annotations.json").read_text())["images"]
    azimuths = [a for image in images for a in image["meta"]["azimuth_deg"]]
    # 7 images: 4 from the first stratum (bin 2: 90-135 degrees), 3 from the second (135-180).
    assert [int(a // 45) for a in azimuths] == [2, 2, 2, 2, 3, 3, 3]
    with pytest.raises(OptimizerError, match="psi is an empty sequence"):
        render_dataset(faced_box_renderer(8), [], 1, 16, tmp_path / "none", ["box"], progress=False)


def test_render_dataset_makes_photo_like_images_by_default_with_the_same_labels(tmp_path) -> None:
    config = PsiConfig(num_classes=1, max_objects=2, plain_background=True)
    psi = Psi.from_target(config, azimuth_bin_probs=[1.0] * 8)
    plain = render_dataset(faced_box_renderer(8), psi, 4, 32, tmp_path / "plain", ["box"], seed=5, progress=False,
                           photometric=None)
    photo = render_dataset(faced_box_renderer(8), psi, 4, 32, tmp_path / "photo", ["box"], seed=5, progress=False)
    annotations = [json.loads((folder / "annotations.json").read_text()) for folder in (plain, photo)]
    assert annotations[0]["annotations"] and annotations[0]["annotations"] == annotations[1]["annotations"]
    assert [i["meta"] for i in annotations[0]["images"]] == [i["meta"] for i in annotations[1]["images"]]
    for image in annotations[0]["images"]:
        name = Path(image["file_name"])
        label = Path("labels") / name.with_suffix(".txt").name
        assert (plain / label).read_text() == (photo / label).read_text()
        pixels = [np.asarray(Image.open(folder / name), dtype=np.float32) for folder in (plain, photo)]
        assert np.abs(pixels[0] - pixels[1]).mean() > 2  # of 255: every image changed


def test_render_dataset_writes_every_batch_in_order_and_surfaces_a_failed_write(tmp_path, monkeypatch) -> None:
    # PNGs are encoded in a thread while the next batch renders: batches of 3 for 7 images.
    psi = Psi.from_target(PsiConfig(num_classes=1, plain_background=True), azimuth_bin_probs=[1.0] * 8)
    out = render_dataset(faced_box_renderer(8), psi, 7, 16, tmp_path / "set", ["box"], batch_size=3, progress=False)
    images = json.loads((out / "annotations.json").read_text())["images"]
    assert [i["file_name"] for i in images] == [f"images/{k:06d}.png" for k in range(7)]
    assert all((out / i["file_name"]).is_file() for i in images)
    add = DatasetWriter.add

    def failing_add(self, *args, **kwargs):
        if len(self._coco_images) == 4:
            raise OSError("disk full")
        return add(self, *args, **kwargs)

    monkeypatch.setattr(DatasetWriter, "add", failing_add)
    with pytest.raises(OSError, match="disk full"):
        render_dataset(faced_box_renderer(8), psi, 7, 16, tmp_path / "full", ["box"], batch_size=3, progress=False)
    assert not (tmp_path / "full" / "annotations.json").exists()
