"""Bounds of what a request may carry: job fields are typed allowlists (no server path, no
arbitrary trainer argument, no coercion, finite bounded numbers), JSON bodies have a size limit
that answers before the body is read, and bad uploads are 4xx with a message, never a 5xx."""

from __future__ import annotations

import json
import math
import struct
import zipfile
import zlib
from pathlib import Path

import anyio
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from service.api.deps import get_settings
from service.settings import MiB
from tests.service.jobs import merged, tiny_job

JOB = tiny_job("asset-0000000000000000", "target-0000000000000000")
"""A job request valid in itself: every check here refuses it before its ids are looked up."""


def refused(client, headers: dict, change: dict, status: int = 422):
    """The answer to JOB with ``change`` merged in (a section's fields merged into its own)."""
    response = client.post("/v1/jobs", headers=headers, json=merged(JOB, change))
    assert response.status_code == status, response.text
    return response.json()["detail"]


def problem(detail: list[dict], *loc: str) -> dict:
    """The validation problem at ``loc`` (under the body)."""
    found = [p for p in detail if tuple(p["loc"]) == ("body", *loc)]
    assert found, detail
    return found[0]


@pytest.fixture
def headers(make_key) -> dict:
    return make_key("acme")


@pytest.mark.parametrize("loc, value, message", [
    (("detector", "weights"), "/srv/nerfsim-data/tenants/other/evil.pt", "detector.weights: '/srv/nerfsim-data"),
    (("scene", "assets"), ["/etc"], "scene.assets: '/etc' is not a record id"),
    (("targets", "val"), "/etc/passwd", "targets: '/etc/passwd' is not a record id"),
    (("scene", "spec"), "/etc", "Extra inputs are not permitted"),
    (("final", "trainer_overrides", "project"), "/tmp/outside", "Extra inputs are not permitted"),
    (("final", "trainer_overrides", "model"), "/tmp/evil.pt", "Extra inputs are not permitted"),
    (("final", "trainer_overrides", "data"), "/etc/data.yaml", "Extra inputs are not permitted"),
    (("final", "trainer_overrides", "optimizer"), "Lion", "Input should be 'auto', 'SGD'"),
    (("final", "trainer_overrides", "lr0"), 5.0, "less than or equal to 1"),
    (("hypergradient", "damping"), "x", "Input should be a valid number"),
    (("detector", "sample_images"), "3", "Input should be a valid integer"),
    (("detector", "sample_images"), True, "Input should be a valid integer"),
    (("outer", "enumerate_bins"), 1, "Input should be a valid boolean"),
    (("outer", "warp_factor"), 9, "Extra inputs are not permitted"),
    (("final", "real_share"), 1.0, "less than 1"),
    (("final", "image_size"), 48, "Input should be a multiple of 32"),
    (("final", "image_size"), 1312, "less than or equal to 1280"),
    (("final", "image_size"), 0, "greater than or equal to 32"),
    (("scene", "photometric"), {"noise": 1}, "Input should be a valid boolean"),
    (("outer", "alignment_ignores"), ["model.22.cv3"], "Extra inputs are not permitted"),  # benchmarks only
    (("final", "uniform_baseline"), "no", "Input should be a valid boolean"),
    (("preset",), "neural-sim-magic", "Input should be 'appearance', 'neural-sim-appearance', 'neural-sim'"),
    (("psi", "initial", "azimuth_bins"), 10_000_000, "less than or equal to 72"),
    (("psi", "initial", "azimuth_bins"), 0, "greater than or equal to 1"),
    (("psi", "initial", "azimuth_bins"), -3, "greater than or equal to 1"),
    (("psi", "initial", "azimuth_bins"), "8", "Input should be a valid integer"),
    (("psi", "initial", "num_classes"), 3, "Extra inputs are not permitted"),
    (("psi", "initial", "learn_azimuth"), False, "Extra inputs are not permitted"),
    (("psi", "initial", "hue_bins"), 3, "Extra inputs are not permitted"),
    (("psi", "initial", "elevation_range_deg"), [0, 50, 80], "List should have at most 2 items"),
    (("budget", "outer_iterations"), "3", "Input should be a valid integer"),
    (("budget", "warp"), 1, "Extra inputs are not permitted"),
    (("seed",), -1, "greater than or equal to 0"),
    (("seed",), 2**64, "less than or equal to 2147483647"),
    (("seed",), 10**30, "less than or equal to 2147483647"),
    (("seed",), "3", "Input should be a valid integer"),
    (("seed",), True, "Input should be a valid integer"),
    (("detector", "arch"), "bogus", "Input should be 'yolov8n', 'yolo11n' or 'yolov8n-cpu'"),
    (("detector", "image_size"), 64.0, "Input should be a valid integer"),
    (("detector", "weightz"), "x", "Extra inputs are not permitted"),
    (("target_val",), "target-0000000000000000", "Extra inputs are not permitted"),  # the flat shape is gone
])
def test_bad_fields_are_refused_naming_them(client, headers, loc: tuple, value, message: str) -> None:
    change: dict = value
    for key in reversed(loc[1:]):
        change = {key: change}
    detail = refused(client, headers, {loc[0]: change})
    # A reference that is not a record id is refused by the request's own check (loc: the body).
    found = [p for p in detail if tuple(p["loc"]) in (("body", *loc), ("body",))]
    assert found and message in found[0]["msg"], detail


@pytest.mark.parametrize("initial, loc, message", [
    ({"elevation_range_deg": [50, 0]}, ("psi", "initial"), "elevation_range_deg: need lo <= hi, got [50.0, 0.0]"),
    ({"background_crop_side": [0.9, 0.2]}, ("psi", "initial"), "background_crop_side: need lo <= hi"),
])
def test_psi_ranges_are_ordered(client, headers, initial: dict, loc: tuple, message: str) -> None:
    assert message in problem(refused(client, headers, {"psi": {"initial": initial}}), *loc)["msg"]


@pytest.mark.parametrize("value", ["1e309", "-1e309", "NaN", "Infinity"])
def test_non_finite_numbers_are_refused_with_a_json_answer(client, headers, value: str) -> None:
    body = json.dumps(JOB)[:-1] + f', "seed": {value}}}'
    response = client.post("/v1/jobs", headers={**headers, "Content-Type": "application/json"}, content=body)
    assert response.status_code == 422, response.text
    found = problem(response.json()["detail"], "seed")
    assert found["msg"] in ("Input should be a finite number", "Input should be a valid integer")
    assert not math.isfinite(float(found["input"]))  # sent back as text: JSON has no inf or NaN
    for key, inner in (("hypergradient", "damping"), ("scene", "fov_deg")):
        body = json.dumps({**JOB, key: {**JOB.get(key, {}), inner: "VALUE"}}).replace('"VALUE"', value)
        response = client.post("/v1/jobs", headers={**headers, "Content-Type": "application/json"}, content=body)
        assert response.status_code == 422, response.text
        found = problem(response.json()["detail"], key, inner)
        assert found["msg"] == "Input should be a finite number"


def test_huge_psi_and_unknown_fields_answer_413_without_reading_them(client, headers) -> None:
    many_keys = {"psi": {"initial": {f"k{i:07d}": 1 for i in range(1_200_000)}}}  # 22 MB of unknown psi keys
    response = client.post("/v1/jobs", headers=headers, json={**JOB, **many_keys})
    assert response.status_code == 413
    assert "larger than the 1048576 byte limit of JSON requests" in response.json()["detail"]
    body = json.dumps(JOB)[:-1].encode() + b', "padding": "' + b"x" * (100 * MiB) + b'"}'
    response = client.post("/v1/jobs", headers={**headers, "Content-Type": "application/json"}, content=body)
    assert response.status_code == 413 and "byte limit of JSON requests" in response.json()["detail"]
    # Just under the limit the body is read, and its unknown fields are named.
    under = {"psi": {"initial": {f"k{i:05d}": 1 for i in range(3)}}}
    assert refused(client, headers, under)[0]["msg"] == "Extra inputs are not permitted"


def test_a_chunked_body_is_cut_off_at_the_limit(client) -> None:
    """Without a Content-Length, the body is counted as it arrives: the app stops asking for
    more past the limit (64 KiB chunks, 1 MiB limit) and answers 413."""
    chunk = b"x" * 65536
    pulled, answer = [], {}

    async def receive():
        pulled.append(1)
        return {"type": "http.request", "body": chunk, "more_body": len(pulled) < 2000}  # 125 MiB in all

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] = answer.get("body", b"") + message.get("body", b"")

    scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "raw_path": b"/v1/jobs", "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "http_version": "1.1", "scheme": "http",
             "server": ("testserver", 80), "client": ("testclient", 1), "root_path": "", "app": client.app}
    anyio.run(client.app, scope, receive, send)
    assert answer["status"] == 413 and "byte limit of JSON requests" in json.loads(answer["body"])["detail"]
    assert len(pulled) <= MiB // len(chunk) + 1


def test_cuda_is_refused_where_the_workers_have_none(client, headers, settings) -> None:
    client.app.dependency_overrides[get_settings] = lambda: settings.model_copy(update={"worker_devices": ["cpu"]})
    try:
        detail = refused(client, headers, {"device": "cuda"})
    finally:
        client.app.dependency_overrides.clear()
    assert detail == ("device: 'cuda' is not offered by this deployment's workers (they offer ['auto', 'cpu']; "
                      "NERFSIM_WORKER_DEVICES lists them)")


def config_of(change: dict):
    """The loop's config of JOB with ``change`` (placeholder paths)."""
    from service.job_config import loop_config, placeholders
    from service.job_schemas import JobCreate

    job = JobCreate.model_validate(merged(JOB, change))
    return loop_config(job, placeholders(job))


def test_allowed_fields_reach_the_loop_config() -> None:
    """What the SDK, the dashboard and the benchmarks send is accepted and converts to the
    loop's config, trainer overrides as a plain dict and unset fields left to the loop."""
    from optimizer.config import OptimizeConfig

    config = config_of({
        "psi": {"initial": {"distance_median": 0.5, "elevation_range_deg": [0, 50]},
                "oracle": {"azimuth_bin_probs": [0, 0, 1, 1, 0, 0, 0, 0]}},
        "detector": {"warmup_steps": 1, "val_map_every": 0, "sample_images": 1}, "hypergradient": {"damping": 1},
        "final": {"trainer_overrides": {"mosaic": 0.0, "close_mosaic": 0, "fliplr": 0.0, "warmup_epochs": 1.0,
                                        "optimizer": "AdamW", "lr0": 0.002}}})
    assert config.psi.initial == {"distance_median": 0.5, "elevation_range_deg": [0.0, 50.0]}
    assert config.final.trainer_overrides == {"optimizer": "AdamW", "lr0": 0.002, "warmup_epochs": 1.0,
                                              "close_mosaic": 0, "mosaic": 0.0, "fliplr": 0.0}
    assert config.psi.oracle == {"azimuth_bin_probs": [0, 0, 1, 1, 0, 0, 0, 0]}
    assert (config.hypergradient.damping, config.detector.warmup_steps, config.detector.inner_batch_size) == (1.0, 1, None)
    assert config.hypergradient.neumann_scale == OptimizeConfig().hypergradient.neumann_scale  # unset: the loop's
    assert config.scene.photometric == {} and config.psi.priors and config.scene.harvest_backgrounds


def test_the_real_photo_settings_reach_the_loop_config() -> None:
    config = config_of({"final": {"real_share": 0.5, "real_only_baseline": False},
                        "scene": {"harvest_backgrounds": False, "photometric": False}, "psi": {"priors": False}})
    assert (config.final.real_share, config.final.real_only_baseline, config.scene.harvest_backgrounds,
            config.psi.priors, config.scene.photometric) == (0.5, False, False, False, None)
    on = config_of({"scene": {"photometric": True}})
    assert on.scene.photometric == {} and on.scene.resting_poses  # the loop's default: objects rest on a plane
    assert config_of({"scene": {"resting_poses": False}}).scene.resting_poses is False
    assert config_of({"scene": {"canonical_pose_share": 0.25}}).scene.canonical_pose_share == 0.25
    assert config_of({"final": {"image_size": 640}}).final.image_size == 640
    assert config_of({}).final.image_size is None  # unset: the photos' size
    with pytest.raises(ValidationError, match="canonical_pose_share"):
        config_of({"scene": {"canonical_pose_share": 1.5}})


def test_the_architectures_are_the_detectors() -> None:
    from typing import get_args

    from nerfsim_client.spec import DetectorSection

    from detector.model import Architecture as DetectorArchitecture

    assert get_args(DetectorSection.model_fields["arch"].annotation) == get_args(DetectorArchitecture)


# --------------------------------------------------------------------------------------------
# uploads


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _coco_zip(folder: Path, bbox: list, image: bytes | None = None) -> Path:
    """A one-image COCO set, zipped (``image``: the PNG's bytes instead of a real 32x32 one)."""
    pixels = folder / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(pixels)
    coco = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "box"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox}]}
    archive = folder / "set.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("annotations.json", json.dumps(coco))
        bundle.writestr("a.png", image if image is not None else pixels.read_bytes())
    return archive


def _post(client, headers: dict, archive: Path):
    with open(archive, "rb") as handle:
        return client.post("/v1/targets", headers=headers, files={"file": (archive.name, handle)}, data={"name": "real"})


@pytest.mark.parametrize("bbox, image, status, message", [
    ([4, 4, 8, 8], None, 201, None),
    (["x", None, 1, 1], None, 422, "set.zip:annotations.json: annotation 1: bbox ['x', None, 1, 1] is not "
                                   "[x, y, width, height] (four finite numbers)"),
    ([4, 4, 8], None, 422, "bbox [4, 4, 8] is not [x, y, width, height]"),
    ([4, 4, 8, 8], _png_header(60000, 60000), 422, "set.zip:a.png: image over the limit of 100000000 pixels"),
])
def test_bad_target_content_is_a_4xx(client, headers, tmp_path: Path, bbox, image, status: int, message) -> None:
    response = _post(client, headers, _coco_zip(tmp_path, bbox, image))
    assert response.status_code == status, response.text
    if message:
        assert message in response.json()["detail"]


def test_zeros_named_zip_are_not_an_archive(client, headers, tmp_path: Path) -> None:
    zeros = tmp_path / "zeros.zip"
    with open(zeros, "wb") as handle:
        handle.truncate(16 * MiB)  # sparse: zeros without writing them
    response = _post(client, headers, zeros)
    assert response.status_code == 422 and response.json()["detail"] == "zeros.zip: not a zip or tar archive"


@pytest.mark.parametrize("build, message", [
    ({"trainer": {"rays_per_step": 10**9}}, "build.trainer.rays_per_step: Input should be less than or equal to 65536"),
    ({"trainer": {"steps": 5}}, "build.trainer.steps: Extra inputs are not permitted"),
    ({"model": {"hidden_dim": "64"}}, "build.model.hidden_dim: Input should be a valid integer"),
    ({"model": {"density_bias": "x"}}, "build.model.density_bias: Input should be a valid number"),
    ({"model": {"plane_resolutions": [16] * 100}}, "build.model.plane_resolutions: List should have at most 6 items after validation, not 100"),
    ({"spp": 10**6}, "build.spp: Input should be less than or equal to 1024"),
])
def test_asset_builds_are_bounded(client, headers, tmp_path: Path, build: dict, message: str) -> None:
    archive = tmp_path / "mesh.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("box.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with open(archive, "rb") as handle:
        response = client.post("/v1/assets", headers=headers, files={"file": (archive.name, handle)},
                               data={"name": "box", "kind": "mesh", "build": json.dumps(build)})
    assert response.status_code == 422 and response.json()["detail"] == message


def test_ids_are_bounded(client, headers) -> None:
    detail = refused(client, headers, {"scene": {"assets": ["a" * 65]}})
    assert "scene.assets: 'aaaa" in problem(detail)["msg"] and "is not a record id" in problem(detail)["msg"]
    assert "at most 1024 characters" in problem(refused(client, headers, {"targets": {"val": "t" * 2000}}),
                                                "targets", "val")["msg"]


def test_a_multipart_body_to_a_json_route_has_the_json_limit(client, headers) -> None:
    """Claiming to be an upload does not lift the JSON limit: the route decides, not the
    Content-Type (FastAPI reads a non-JSON body to a JSON route whole)."""
    response = client.post("/v1/jobs", headers=headers, files={"file": ("big.bin", b"x" * (2 * MiB))})
    assert response.status_code == 413 and "byte limit of JSON requests" in response.json()["detail"]


def test_records_stored_before_the_allowlists_still_load() -> None:
    """A stored job or asset with settings no longer accepted reads without them (a queued job
    then runs without the path it named) instead of breaking every listing of its tenant."""
    from service.job_schemas import JobCreate, JobRecord
    from service.schemas import AssetRecord

    legacy_job = {"assets": ["asset-0000000000000000"], "target_val": "target-0000000000000000", "preset": "neural-sim",
                  "id": "job-0000000000000000", "tenant": "acme", "status": "queued", "psi": {"bins": 3},
                  "options": {"detector_weights": "/data/tenants/b/evil.pt", "sample_images": 1,
                              "final_trainer_overrides": {"project": "/tmp", "lr0": 0.002}}}
    job = JobRecord.model_validate_json(json.dumps(legacy_job))
    assert job.spec.detector.model_dump() == {"arch": "yolov8n-cpu", "image_size": 64, "sample_images": 1}
    assert job.spec.final.model_dump() == {"trainer_overrides": {"lr0": 0.002}}
    assert job.spec.psi.initial.model_dump() == {}
    stored = {**legacy_job, "spec": merged(JOB, {"detector": {"retired_knob": 1}})}
    assert JobRecord.model_validate(stored).spec.detector == JobCreate.model_validate(JOB).detector
    legacy_asset = {"id": "asset-0000000000000000", "tenant": "acme", "name": "box", "kind": "mesh",
                    "status": "ready", "build": {"views": 12, "trainer": {"steps": 9, "rays_per_step": 512}}}
    asset = AssetRecord.model_validate_json(json.dumps(legacy_asset))
    assert asset.build.trainer.model_dump() == {"rays_per_step": 512} and asset.build.views == 12
