"""Render a labelled dataset (COCO + YOLO + dataset card) from a scene-parameter distribution."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from detector.datasets import DatasetWriter
from optimizer.psi import OptimizerError, Psi
from renderer.camera import Size
from renderer.photometric import PhotometricConfig, compositor, over, photograph
from renderer.scene_renderer import SceneRenderer
from renderer.scene_types import RenderBatch, SceneParams


def image_meta(params: SceneParams, batch: RenderBatch, row: int) -> dict:
    """Pose, lighting and appearance of the labelled objects of one image (degrees, metres,
    stops; the appearance is the object's training-image embedding rendered, -1 its average;
    the pose id its resting pose, -1 the canonical one)."""
    keep = batch.keep[row]
    appearance = params.appearance_ids[row][keep].tolist() if params.appearance_ids is not None else [-1] * int(keep.sum())
    return {
        "azimuth_deg": torch.rad2deg(params.azimuth[row][keep]).remainder(360).tolist(),
        "elevation_deg": torch.rad2deg(params.elevation[row][keep]).tolist(),
        "distance": params.distance[row][keep].tolist(),
        "exposure": params.exposure[row][keep].tolist(),
        "visible": batch.visible[row][keep].tolist(),
        "appearance_id": appearance,
        "pose_id": params.pose_ids[row][keep].tolist() if params.pose_ids is not None else [-1] * int(keep.sum()),
        "background_id": int(params.background_ids[row]),
    }


@torch.no_grad()
def render_dataset(
    renderer: SceneRenderer,
    psi: Psi | Sequence[Psi],
    num_images: int,
    image_size: Size,
    out_dir: Path,
    class_names: list[str],
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    photometric: PhotometricConfig | None = PhotometricConfig(),
) -> Path:
    """Draw ``num_images`` scenes from ``psi``, render them at ``image_size`` (an int: squares;
    ``(height, width)``: the photos' aspect, renderer.camera) and write them to ``out_dir``.

    A sequence of psis is an equal mixture sampled stratified: each gives an equal share of
    the images (the first ones one more where the count does not divide), so the set holds
    the mixture's proportions exactly instead of a draw from them (a target set of 100 images
    drawn from two azimuth bins held 42 / 58).

    ``photometric`` makes the images look like photos (renderer.photometric: clutter behind the
    objects, feathered edges, blur, noise, colour, JPEG); it draws from a stream of its own, so
    the scenes and labels are those of the plain images. None: plain renders."""
    strata = [psi] if isinstance(psi, Psi) else list(psi)
    if not strata:
        raise OptimizerError("render_dataset: psi is an empty sequence")
    generator = torch.Generator().manual_seed(seed)
    effects = torch.Generator().manual_seed(seed + 0x5EED)
    bar = tqdm(total=num_images, desc="render dataset", unit="img", disable=not progress)
    # A batch's PNGs are encoded in a thread while the next batch renders (Pillow and torch
    # release the GIL), one batch at a time: the files are those of writing them in turn.
    with DatasetWriter(Path(out_dir), class_names) as writer, ThreadPoolExecutor(max_workers=1) as encoder:
        writing: Future | None = None
        for index, stratum in enumerate(strata):
            remaining = num_images // len(strata) + (index < num_images % len(strata))
            while remaining:
                count = min(batch_size, remaining)
                params = stratum.sample(count, generator).scene
                compositing = over if photometric is None else compositor(photometric, effects)
                batch = renderer.render(params, image_size, compositing)
                images = batch.rgb.clamp(0, 1)
                if photometric is not None:
                    images = photograph(images, photometric, effects)
                rows = [(images[row], batch.boxes[row][batch.keep[row]], batch.classes[row][batch.keep[row]],
                         image_meta(params, batch, row)) for row in range(count)]
                if writing is not None:
                    writing.result()
                writing = encoder.submit(_write_rows, writer, rows, bar)
                remaining -= count
        if writing is not None:
            writing.result()
    bar.close()
    return Path(out_dir)


def _write_rows(writer: DatasetWriter, rows: list[tuple], bar: tqdm) -> None:
    for row in rows:
        writer.add(*row)
    bar.update(len(rows))
