"""Detector weights as a tenant's upload: checked with the safe loader before anything is
stored, named by id in a job (never by path), resolved in the caller's tenant only."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import torch

from detector.model import DetectorConfig, build_detector, save_detector
from optimizer.final_training import detector_config
from service.records import RecordStore
from service.job_schemas import JobRecord
from service.storage import Storage
from service.tasks import job_config
from tests.detector.test_checkpoint import _RunsCode
from tests.service.jobs import setup_job_inputs, stored_files, tiny_job, upload


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A yolov8n-cpu checkpoint of classes box and mug, as save_detector writes it."""
    model = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["box", "mug"], seed=7))
    return save_detector(model, tmp_path_factory.mktemp("weights") / "boxes.pt")


def _record_dir(storage_root: Path, folder: str, record_id: str) -> Path:
    """The folder of a record, whatever tenant owns it (tenants/<tenant>/<folder>/<id>)."""
    return next(Storage(storage_root).tenants_dir().glob(f"*/{folder}/{record_id}"))


def test_weights_are_uploaded_listed_read_and_deleted(client, make_key, settings, weights_file: Path) -> None:
    headers = make_key("acme")
    weights = upload(client, "/v1/weights", headers, weights_file, name="boxes v1")

    assert weights["id"].startswith("weights-") and weights["name"] == "boxes v1"
    assert weights["class_names"] == ["box", "mug"] and weights["scale"] == "n"
    assert weights["parameters"] > 100_000 and weights["size_bytes"] == weights_file.stat().st_size
    stored = _record_dir(settings.storage_root, "weights", weights["id"])
    assert (stored / "weights.pt").read_bytes() == weights_file.read_bytes()
    assert client.get(f"/v1/weights/{weights['id']}", headers=headers).json() == weights
    page = client.get("/v1/weights", headers=headers).json()
    assert page["count"] == 1 and page["data"] == [weights]
    assert client.get("/v1/weights?limit=0", headers=headers).status_code == 422

    assert client.delete(f"/v1/weights/{weights['id']}", headers=headers).status_code == 204
    assert client.get(f"/v1/weights/{weights['id']}", headers=headers).status_code == 404
    assert not stored.exists()


@pytest.mark.parametrize("payload", ["bare", "in-checkpoint"])
def test_a_malicious_pickle_is_refused_and_leaves_nothing(client, make_key, settings, tmp_path, payload) -> None:
    headers = make_key("acme")
    marker = tmp_path / "marker"
    hostile = tmp_path / "evil.pt"
    torch.save(_RunsCode(marker) if payload == "bare" else {"model": None, "ema": _RunsCode(marker)}, hostile)

    with open(hostile, "rb") as handle:
        response = client.post("/v1/weights", headers=headers, files={"file": ("evil.pt", handle)}, data={"name": "x"})

    assert response.status_code == 422, response.text
    assert response.json()["detail"] == ("evil.pt: not a YOLO detection checkpoint: it references posix.system "
                                         "(only Ultralytics detection layers are loaded)")
    assert not marker.exists()
    assert stored_files(settings.storage_root) == []
    assert client.get("/v1/weights", headers=headers).json() == {"data": [], "count": 0}


def test_other_uploads_are_refused_with_the_reason(client, make_key, settings, tmp_path) -> None:
    headers = make_key("acme")
    (tmp_path / "notes.pt").write_bytes(b"not a checkpoint")
    model = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["box"]))
    torch.save(model.state_dict(), tmp_path / "state.pt")
    for name, message in [("notes.pt", "notes.pt: not a loadable Ultralytics checkpoint"),
                          ("state.pt", "state.pt: not an Ultralytics checkpoint")]:
        with open(tmp_path / name, "rb") as handle:
            response = client.post("/v1/weights", headers=headers, files={"file": (name, handle)}, data={"name": "x"})
        assert response.status_code == 422 and response.json()["detail"].startswith(message), response.text
        assert str(tmp_path) not in response.text and str(settings.storage_root) not in response.text
    with open(tmp_path / "state.pt", "rb") as handle:
        response = client.post("/v1/weights", headers=headers, files={"file": ("state.pt", handle)}, data={"name": ""})
    assert response.status_code == 422 and "name" in str(response.json()["detail"])
    assert stored_files(settings.storage_root) == []


def test_a_job_names_weights_by_id_in_its_own_tenant_only(client, make_key, asset_zip: Path, coco_zip: Path,
                                                          weights_file: Path) -> None:
    owner, other = make_key("owner"), make_key("other")
    owned = upload(client, "/v1/weights", owner, weights_file, name="boxes")
    asset_id, target_id = setup_job_inputs(client, other, asset_zip, coco_zip)

    stolen = client.post("/v1/jobs", headers=other, json=tiny_job(asset_id, target_id, detector={"weights": owned["id"]}))
    missing = client.post("/v1/jobs", headers=other,
                          json=tiny_job(asset_id, target_id, detector={"weights": "weights-0123456789abcdef"}))
    assert stolen.status_code == missing.status_code == 404
    assert stolen.json()["detail"] == f"weights {owned['id']} not found"
    assert missing.json()["detail"] == "weights weights-0123456789abcdef not found"
    assert client.get(f"/v1/weights/{owned['id']}", headers=other).status_code == 404
    assert client.delete(f"/v1/weights/{owned['id']}", headers=other).status_code == 404

    for change in ({"detector": {"weights": "/abs/path/evil.pt"}}, {"outer": {"detector_weights": "/abs/path/evil.pt"}}):
        response = client.post("/v1/jobs", headers=other, json=tiny_job(asset_id, target_id, **change))
        assert response.status_code == 422, response.text
        assert "weights" in str(response.json()["detail"])
    assert client.get("/v1/jobs", headers=other).json()["count"] == 0


def test_weights_must_share_a_class_with_the_assets(client, make_key, asset_zip: Path, coco_zip: Path,
                                                    tmp_path: Path) -> None:
    headers = make_key("acme")
    asset_id, target_id = setup_job_inputs(client, headers, asset_zip, coco_zip)
    cars = save_detector(build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["car", "bus"])),
                         tmp_path / "cars.pt")
    weights = upload(client, "/v1/weights", headers, cars, name="cars")

    response = client.post("/v1/jobs", headers=headers, json=tiny_job(asset_id, target_id, detector={"weights": weights["id"]}))

    assert response.status_code == 422
    assert response.json()["detail"] == (f"detector.weights: weights {weights['id']} have classes ['car', 'bus'], "
                                         "none of which is an asset's class (asset classes: ['box'])")


def test_a_job_with_uploaded_weights_starts_its_detector_from_them(client, make_key, settings, asset_zip: Path,
                                                                    coco_zip: Path, weights_file: Path,
                                                                    tmp_path: Path) -> None:
    headers = make_key("acme")
    asset_id, target_id = setup_job_inputs(client, headers, asset_zip, coco_zip)
    weights = upload(client, "/v1/weights", headers, weights_file, name="boxes")
    response = client.post("/v1/jobs", headers=headers, json=tiny_job(asset_id, target_id, detector={"weights": weights["id"]}))
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["spec"]["detector"]["weights"] == weights["id"]
    # In use by a queued job: not deletable.
    assert client.delete(f"/v1/weights/{weights['id']}", headers=headers).status_code == 409

    store = RecordStore(redis.Redis.from_url(settings.redis_url), Storage(settings.storage_root))
    record = store.get(JobRecord, _record_dir(settings.storage_root, "jobs", job["id"]).parent.parent.name, job["id"])
    config = job_config(record, store)

    stored = store.storage.record_dir("weights", record.tenant, weights["id"]) / "weights.pt"
    assert config.detector.weights == str(stored)
    detector = build_detector(detector_config(config, ["box"]))
    source = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["box", "mug"], seed=7))
    logits = {f"model.22.cv3.{level}.2.{kind}" for level in range(3) for kind in ("weight", "bias")}
    for name, tensor in source.state_dict().items():
        if name in logits:  # the class-logit rows: box carries over, mug is not a job class
            assert torch.equal(detector.state_dict()[name][0], tensor[0]) and len(detector.state_dict()[name]) == 1
        else:
            assert torch.equal(detector.state_dict()[name], tensor), name


@pytest.mark.slow
def test_a_job_with_uploaded_weights_runs_on_a_worker(client, make_key, workers, asset_zip: Path, coco_zip: Path,
                                                      weights_file: Path) -> None:
    """The worker reads the stored weights with the safe loader, and Ultralytics' trainer gets
    only the detector nerfsim saved itself: the job succeeds and delivers its detector."""
    from tests.service.conftest import wait_for

    headers = make_key("acme")
    asset_id, target_id = setup_job_inputs(client, headers, asset_zip, coco_zip)
    weights = upload(client, "/v1/weights", headers, weights_file, name="boxes")
    job = client.post("/v1/jobs", headers=headers, json=tiny_job(asset_id, target_id, detector={"weights": weights["id"]})).json()
    workers.start()

    done = wait_for(lambda: (r := client.get(f"/v1/jobs/{job['id']}", headers=headers).json())["status"]
                    in ("succeeded", "failed", "cancelled") and r, 300, "the job to end")
    assert done["status"] == "succeeded", (done["error"], workers.logs()[-3000:])
    assert "detector.pt" in done["artifacts"]
