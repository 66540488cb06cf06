"""Splat assets through the real API and a real worker: a splat .ply uploaded bare or archived
(bad files refused with a 422 naming the problem, nothing already accepted lost), splats trained
on posed images and on a mesh's renders and baked from a NeRF asset, and a job whose scene holds
a splat."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from renderer.splat_asset import load_splat_asset
from renderer.splat_ply import save_splat_ply
from service.archives import zip_folder
from tests.renderer.meshes import write_box
from tests.renderer.splats import random_gaussians
from tests.service.conftest import wait_for
from tests.service.jobs import read_events, tiny_job, upload
from tests.service.test_uploads import post
from tests.service.test_worker_jobs import finished

TINY_SPLAT_BUILD = {"views": 6, "test_views": 2, "view_size": 32, "train_steps": 20, "train_minutes": 1,
                    "splat": {"initial_gaussians": 200, "densify_from": 10, "densify_every": 10}}


def good_ply(folder: Path, name: str = "capture.ply") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    g = random_gaussians(80, degree=1, dtype=torch.float32)
    g.means = g.means + torch.tensor([0.5, 0.0, 0.2])  # not centred, as a capture is
    save_splat_ply(g, folder / name)
    return folder / name


def vertex_ply(path: Path, columns: dict[str, np.ndarray]) -> Path:
    data = np.empty(len(next(iter(columns.values()))), dtype=[(k, v.dtype) for k, v in columns.items()])
    for key, values in columns.items():
        data[key] = values
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))
    return path


def test_splat_uploads_good_and_bad(client, make_key, settings, tmp_path: Path) -> None:
    headers = make_key("acme")
    bare = upload(client, "/v1/assets", headers, good_ply(tmp_path / "good"), name="splat-box", kind="splat")
    assert bare["kind"] == "splat" and bare["status"] == "building" and bare["details"]["upload"] == "capture.ply"
    archived = upload(client, "/v1/assets", headers, zip_folder(tmp_path / "good", tmp_path / "good.zip"),
                      name="splat-zip", kind="splat", build=json.dumps({"up_axis": "z", "scale": 0.5}))
    assert archived["build"]["up_axis"] == "z" and archived["build"]["scale"] == 0.5

    bad = tmp_path / "bad"
    bad.mkdir()
    cols = {a: np.zeros(3, np.float32) for a in "xyz"}
    full = {name: np.zeros(3, np.float32) for name in PlyData.read(str(good_ply(tmp_path / "full", "g.ply")))["vertex"].data.dtype.names}
    nan = {**full, "x": np.full(3, np.nan, np.float32)}
    ints = {**full, "opacity": np.zeros(3, np.int32)}
    (bad / "notes.ply").write_text("not a ply at all\n")
    (bad / "notes.txt").write_text("hello")
    two = tmp_path / "two"
    good_ply(two, "a.ply"), good_ply(two, "b.ply")
    cases = [
        (vertex_ply(bad / "geometry.ply", cols), "geometry.ply: no colours"),
        (vertex_ply(bad / "empty.ply", {k: v[:0] for k, v in full.items()}), "empty.ply: the file holds no Gaussians"),
        (vertex_ply(bad / "nan.ply", nan), "every one of its 3 Gaussians has NaN or infinite values"),
        (vertex_ply(bad / "ints.ply", ints), "vertex property 'opacity' must be float"),
        (bad / "notes.ply", "notes.ply: not a readable PLY file"),
        (bad / "notes.txt", "notes.txt: neither a zip or tar archive nor a splat .ply file"),
        (zip_folder(two, tmp_path / "two.zip"), "several splat files"),
    ]
    for path, message in cases:
        response = post(client, "/v1/assets", headers, path, name="box", kind="splat")
        assert response.status_code == 422 and message in response.json()["detail"], (message, response.text)
        assert str(settings.storage_root) not in response.json()["detail"]
    response = post(client, "/v1/assets", headers, tmp_path / "good" / "capture.ply", name="box", kind="splat",
                    build='{"up_axis": "x"}')
    assert response.status_code == 422 and "build.up_axis" in response.json()["detail"]
    response = post(client, "/v1/assets", headers, tmp_path / "good" / "capture.ply", name="box", kind="splat",
                    build='{"splat": {"sh_degree": 7}}')
    assert response.status_code == 422 and "build.splat.sh_degree" in response.json()["detail"]
    # The two accepted uploads are still there, and only they.
    listed = client.get("/v1/assets?kind=splat", headers=headers).json()
    assert sorted(a["id"] for a in listed["data"]) == sorted([bare["id"], archived["id"]])


@pytest.mark.slow
def test_splat_builds_and_a_job_with_a_splat_on_a_worker(client, make_key, workers, settings, asset_zip: Path,
                                                         coco_zip: Path, box_views: Path, tmp_path: Path) -> None:
    headers = make_key("acme")
    imported = upload(client, "/v1/assets", headers, good_ply(tmp_path / "ply"), name="capture", kind="splat",
                      build=json.dumps({"scale": 2.0}))
    baked = upload(client, "/v1/assets", headers, asset_zip, name="box", kind="nerfsim",
                   build=json.dumps({**TINY_SPLAT_BUILD, "representation": "splat"}))
    trained = upload(client, "/v1/assets", headers, zip_folder(box_views, tmp_path / "views.zip"), name="views-box",
                     kind="posed-images", build=json.dumps({**TINY_SPLAT_BUILD, "representation": "splat"}))
    from_mesh = upload(client, "/v1/assets", headers, zip_folder(write_box(tmp_path / "mesh").parent, tmp_path / "mesh.zip"),
                       name="mesh-box", kind="mesh", build=json.dumps({**TINY_SPLAT_BUILD, "representation": "splat",
                                                                       "spp": 2}))
    assert imported["status"] == baked["status"] == trained["status"] == from_mesh["status"] == "building"
    workers.start()
    built = {}
    for asset in (imported, baked, trained, from_mesh):
        built[asset["id"]] = record = wait_for(finished(client, f"/v1/assets/{asset['id']}", headers, ("ready", "failed")),
                                               240, "a splat build")
        assert record["status"] == "ready", record["error"]
    tenant_dir = settings.storage_root / "tenants" / next((settings.storage_root / "tenants").iterdir()).name
    gaussians, meta = load_splat_asset(tenant_dir / "assets" / imported["id"] / "object")
    assert meta.num_gaussians == 80 and meta.source["scale"] == 2.0
    assert gaussians.aabb().mean(dim=0).abs().max() < 1e-4  # centred in the object frame
    assert built[baked["id"]]["details"]["training"]["render_psnr_db"] > 12
    assert built[trained["id"]]["details"]["training"]["held_out_psnr_db"] > 12
    assert built[from_mesh["id"]]["details"]["training"]["held_out_psnr_db"] > 12
    assert load_splat_asset(tenant_dir / "assets" / from_mesh["id"] / "object")[1].source["start"] == "mesh surface"

    target = upload(client, "/v1/targets", headers, coco_zip, name="real", role="both", format="coco")
    job = client.post("/v1/jobs", headers=headers, json=tiny_job(baked["id"], target["id"])).json()
    done = wait_for(finished(client, f"/v1/jobs/{job['id']}", headers, ("succeeded", "failed", "cancelled")),
                    300, "the job with a splat")
    assert done["status"] == "succeeded", done["error"]
    assert read_events(client, job["id"], headers)[-1]["data"]["status"] == "succeeded"
    scene = json.loads((tenant_dir / "jobs" / job["id"] / "config.json").read_text())["scene"]["spec"]  # inline
    assert scene["objects"][0]["path"].endswith(f"{baked['id']}/object")
