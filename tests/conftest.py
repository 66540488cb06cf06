"""Test-wide settings: single-threaded math (the CI machine has 2 shared cores, and busy-waiting
OpenMP threads made training steps 30x slower there), and everything offline."""

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(__file__).resolve().parent.parent / ".yolo"))

import torch  # noqa: E402  (after the environment above)

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def box_views(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A posed image set (30 + 4 held-out views, 32 px) of the small textured test box."""
    from renderer.mesh import build_posed_image_set
    from tests.renderer.meshes import write_box

    folder = tmp_path_factory.mktemp("box")
    build_posed_image_set(write_box(folder / "mesh"), folder / "views", num_views=30, num_test_views=4, size=32,
                          spp=4, progress=False)
    return folder / "views"


@pytest.fixture(scope="session")
def trained_box(box_views: Path):
    """A small object NeRF of the test box, trained for a few seconds: (field, stats)."""
    from renderer.posed_images import load_posed_images
    from renderer.train_object import ObjectTrainerConfig, train_object_field
    from tests.renderer.meshes import SMALL_MODEL

    config = ObjectTrainerConfig(model=SMALL_MODEL, steps=150, rays_per_step=1024, samples_per_ray=64,
                                 occupancy_every=50, hull_fit_steps=100, visibility_rays=20000)
    return train_object_field(load_posed_images(box_views, "train"), config, progress=False)


@pytest.fixture(scope="session")
def box_asset(tmp_path_factory: pytest.TempPathFactory, trained_box) -> Path:
    """The trained test box saved as a nerfsim asset folder."""
    from dataclasses import asdict

    from renderer.object_field import ObjectAssetMeta
    from renderer.train_object import save_object_asset

    field, stats = trained_box
    meta = ObjectAssetMeta(name="box", aabb=field.aabb.tolist(), model=asdict(field.config), training={"steps": stats["steps"]})
    return save_object_asset(field, meta, tmp_path_factory.mktemp("assets") / "box")
