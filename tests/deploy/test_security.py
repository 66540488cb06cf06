"""Security: schemathesis over every operation of /openapi.json (no 5xx, answers as documented),
tenant isolation on every endpoint, upload attacks through the API (nothing written outside the
tenant's space), per-key rate limits, and API keys that never reach the logs."""

from __future__ import annotations

import io
import tarfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from nerfsim_client import Client, RetryPolicy, ValidationError

from benchmarks.scale import ApiServer, small_job
from service.api.main import create_app
from service.keys import KeyStore
from service.settings import ServiceSettings
from service.storage import Storage
from service.tasks import WORK_DIR
from tests.service.conftest import FAST_HEARTBEATS, WorkerProcesses, wait_for
from tests.service.test_archives import tar_file, write_tar, write_zip

pytestmark = pytest.mark.slow  # the module's service runs a real job on a worker first (~20 s)

V1_OPERATIONS = {
    ("POST", "/v1/assets"), ("GET", "/v1/assets"), ("GET", "/v1/assets/{asset_id}"), ("DELETE", "/v1/assets/{asset_id}"),
    ("POST", "/v1/targets"), ("GET", "/v1/targets"), ("GET", "/v1/targets/{target_id}"),
    ("DELETE", "/v1/targets/{target_id}"),
    ("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/{job_id}"), ("DELETE", "/v1/jobs/{job_id}"),
    ("POST", "/v1/jobs/{job_id}/cancel"), ("GET", "/v1/jobs/{job_id}/events"), ("GET", "/v1/jobs/{job_id}/artifacts"),
    ("GET", "/v1/jobs/{job_id}/artifacts/{name}"), ("GET", "/v1/jobs/{job_id}/files/{path}"),
    ("POST", "/v1/weights"), ("GET", "/v1/weights"), ("GET", "/v1/weights/{weights_id}"),
    ("DELETE", "/v1/weights/{weights_id}"),
    ("POST", "/v1/backgrounds"), ("GET", "/v1/backgrounds"), ("GET", "/v1/backgrounds/{backgrounds_id}"),
    ("DELETE", "/v1/backgrounds/{backgrounds_id}"),
    ("GET", "/v1/presets"),
    ("POST", "/v1/jobs/{job_id}/retry"), ("POST", "/v1/assets/{asset_id}/cancel"),
}
"""Every tenant-scoped operation; the tests below fail when the API gains one they do not cover."""


@dataclass
class Tenant:
    headers: dict[str, str]
    name: str
    asset_id: str
    target_id: str
    finished_job: str
    artifact: str
    sample: str
    """A file path of the finished job's /files/ (a sample image)."""
    weights_id: str
    backgrounds_id: str
    """A background photo set the finished job was composed on."""


@dataclass
class Service:
    settings: ServiceSettings
    client: TestClient
    owner: Tenant

    def new_key(self, tenant: str) -> tuple[str, dict[str, str]]:
        key, _ = self.client.app.state.keys.create(tenant)
        return key, {"Authorization": f"Bearer {key}"}

    def queued_job(self) -> str:
        """A new queued job of the owner (no worker runs)."""
        request = small_job(self.owner.asset_id, self.owner.target_id, seed=int(time.time() * 1000) % 100_000)
        return self.client.post("/v1/jobs", headers=self.owner.headers, json=request).json()["id"]


def _upload(client: TestClient, path: str, headers: dict, archive: Path, **form):
    with open(archive, "rb") as handle:
        return client.post(path, headers=headers, files={"file": (archive.name, handle)}, data=form)


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory, small_inputs: tuple[Path, Path]) -> Iterator[Service]:
    """The API in-process (no rate limit: schemathesis sends many requests with one key), with
    a tenant owning an asset, a target, weights, a background set, a queued job and a job that a
    real worker finished (on the background set's photos)."""
    root = tmp_path_factory.mktemp("security")
    settings = ServiceSettings(redis_url=redis_url, storage_root=root / "storage", queue_name=f"sec-{uuid.uuid4().hex[:8]}",
                               rate_limit_per_s=0, **FAST_HEARTBEATS)
    with TestClient(create_app(settings)) as client:
        name = f"owner-{uuid.uuid4().hex[:8]}"
        key, _ = client.app.state.keys.create(name)
        headers = {"Authorization": f"Bearer {key}"}
        asset = _upload(client, "/v1/assets", headers, small_inputs[0], name="thing", kind="nerfsim").json()
        target = _upload(client, "/v1/targets", headers, small_inputs[1], name="real", format="coco").json()
        weights = _upload(client, "/v1/weights", headers, _weights_file(root), name="thing detector").json()
        photos = _upload(client, "/v1/backgrounds", headers, _photos_file(root), name="walls").json()
        finished = client.post("/v1/jobs", headers=headers,
                               json=small_job(asset["id"], target["id"], scene={"backgrounds": [photos["id"]]})).json()
        workers = WorkerProcesses(settings, root)
        workers.start()
        try:
            record = wait_for(lambda: (r := client.get(f"/v1/jobs/{finished['id']}", headers=headers).json())["status"]
                              in ("succeeded", "failed") and r, 180, "the job to finish")
        finally:
            workers.stop()
        assert record["status"] == "succeeded", (record["error"], workers.logs()[-3000:])
        work = Storage(settings.storage_root).record_dir("job", name, finished["id"]) / WORK_DIR
        sample = next(work.glob("samples/*.png")).relative_to(work).as_posix()
        owner = Tenant(headers, name, asset["id"], target["id"], finished["id"], "psi.json", sample, weights["id"],
                       photos["id"])
        yield Service(settings, client, owner)


def _weights_file(folder: Path) -> Path:
    from detector.model import DetectorConfig, build_detector, save_detector

    return save_detector(build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["thing"])), folder / "thing.pt")


def _photos_file(folder: Path) -> Path:
    from tests.service.test_backgrounds import photo_bytes

    return write_zip(folder / "walls.zip", {f"wall_{i}.jpg": photo_bytes(48, 32, seed=i) for i in range(2)})


# --------------------------------------------------------------------------------------------
# schemathesis


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(service: Service) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis import checks

    conformance = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
                   checks.response_headers_conformance, checks.response_schema_conformance,
                   checks.negative_data_rejection, checks.missing_required_header]
    schema = schemathesis.openapi.from_asgi("/openapi.json", service.client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {(op.method.upper(), op.path) for op in operations}
    assert labels == V1_OPERATIONS | {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
    headers = service.owner.headers
    failures = []
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def generated(case) -> None:
            case.call_and_validate(headers=headers, checks=conformance)

        try:
            generated()
        except (AssertionError, Exception, BaseExceptionGroup) as failure:  # noqa: B014  (schemathesis raises groups)
            failures.append(f"{operation.label}: {failure}")
    assert not failures, "\n\n".join(failures)[:6000]

    # Random ids are never found: the real records' answers are checked too (reads first,
    # then the writes that change them).
    owner = service.owner
    queued = service.queued_job()
    ids = {"asset_id": owner.asset_id, "target_id": owner.target_id, "job_id": owner.finished_job,
           "weights_id": owner.weights_id, "backgrounds_id": owner.backgrounds_id}
    real = [("GET", "/v1/assets/{asset_id}", {}), ("GET", "/v1/targets/{target_id}", {}), ("GET", "/v1/jobs/{job_id}", {}),
            ("GET", "/v1/weights/{weights_id}", {}), ("GET", "/v1/backgrounds/{backgrounds_id}", {}),
            ("GET", "/v1/jobs/{job_id}/artifacts", {}), ("GET", "/v1/jobs/{job_id}/events", {}),
            ("GET", "/v1/jobs/{job_id}/artifacts/{name}", {"name": owner.artifact}),
            ("GET", "/v1/jobs/{job_id}/artifacts/{name}", {"name": "dataset.zip"}),
            ("GET", "/v1/jobs/{job_id}/files/{path}", {"path": owner.sample}),
            ("POST", "/v1/jobs/{job_id}/cancel", {"job_id": queued}),
            ("DELETE", "/v1/jobs/{job_id}", {"job_id": queued})]
    by_label = {(op.method.upper(), op.path): op for op in operations}
    for method, path, parameters in real:
        case = by_label[method, path].Case(path_parameters={k: v for k, v in {**ids, **parameters}.items() if "{" + k in path})
        response = case.call_and_validate(headers=headers, checks=conformance)
        assert response.status_code < 300, (method, path, response.status_code, response.text[:500])


# --------------------------------------------------------------------------------------------
# tenant isolation


def test_every_endpoint_is_tenant_isolated(service: Service) -> None:
    client, owner = service.client, service.owner
    _, other = service.new_key(f"other-{uuid.uuid4().hex[:8]}")
    job, queued = f"/v1/jobs/{owner.finished_job}", f"/v1/jobs/{service.queued_job()}"
    not_found = {
        ("GET", "/v1/assets/{asset_id}"): f"/v1/assets/{owner.asset_id}",
        ("DELETE", "/v1/assets/{asset_id}"): f"/v1/assets/{owner.asset_id}",
        ("GET", "/v1/targets/{target_id}"): f"/v1/targets/{owner.target_id}",
        ("DELETE", "/v1/targets/{target_id}"): f"/v1/targets/{owner.target_id}",
        ("GET", "/v1/jobs/{job_id}"): job,
        ("DELETE", "/v1/jobs/{job_id}"): job,
        ("POST", "/v1/jobs/{job_id}/cancel"): queued + "/cancel",
        ("POST", "/v1/jobs/{job_id}/retry"): job + "/retry",
        ("POST", "/v1/assets/{asset_id}/cancel"): f"/v1/assets/{owner.asset_id}/cancel",
        ("GET", "/v1/jobs/{job_id}/events"): job,
        ("GET", "/v1/jobs/{job_id}/artifacts"): job + "/artifacts",
        ("GET", "/v1/jobs/{job_id}/artifacts/{name}"): f"{job}/artifacts/{owner.artifact}",
        ("GET", "/v1/jobs/{job_id}/files/{path}"): f"{job}/files/{owner.sample}",
        ("GET", "/v1/weights/{weights_id}"): f"/v1/weights/{owner.weights_id}",
        ("DELETE", "/v1/weights/{weights_id}"): f"/v1/weights/{owner.weights_id}",
        ("GET", "/v1/backgrounds/{backgrounds_id}"): f"/v1/backgrounds/{owner.backgrounds_id}",
        ("DELETE", "/v1/backgrounds/{backgrounds_id}"): f"/v1/backgrounds/{owner.backgrounds_id}",
    }
    listed = {("GET", "/v1/assets"), ("GET", "/v1/targets"), ("GET", "/v1/jobs"), ("GET", "/v1/weights"),
              ("GET", "/v1/backgrounds")}
    created = {("POST", "/v1/assets"), ("POST", "/v1/targets"), ("POST", "/v1/jobs"), ("POST", "/v1/weights"),
               ("POST", "/v1/backgrounds")}
    shared = {("GET", "/v1/presets")}  # the same for every tenant; a key still needed
    assert set(not_found) | listed | created | shared == V1_OPERATIONS
    for _, path in shared:
        assert client.get(path, headers=other).json() == client.get(path, headers=owner.headers).json()
        assert client.get(path).status_code == 401

    for (method, _), path in not_found.items():
        # The owner reaches each of these (reads only: the writes would change the records)...
        if method == "GET":
            assert client.get(path, headers=owner.headers).status_code == 200, path
        # ...another tenant finds nothing there, and without a key nothing answers.
        response = client.request(method, path, headers=other)
        assert response.status_code == 404, (method, path, response.status_code, response.text)
        assert owner.name not in response.text
        assert client.request(method, path).status_code == 401, (method, path)
    for _, path in listed:
        assert client.get(path, headers=other).json() == {"data": [], "count": 0}
        assert client.get(path, headers=owner.headers).json()["count"] >= 1
        assert client.get(path).status_code == 401

    # Another tenant cannot build a job on the owner's asset or target...
    response = client.post("/v1/jobs", headers=other, json=small_job(owner.asset_id, owner.target_id))
    assert response.status_code == 404 and owner.asset_id in response.json()["detail"]
    for _, path in created:
        assert client.post(path).status_code == 401, path
    # ...and what it uploads lands in its own space only.
    owner_files = _tree(service.settings.storage_root / "tenants" / owner.name)
    uploaded = client.post("/v1/assets", headers=other, data={"name": "thing", "kind": "nerfsim"},
                           files={"file": ("a.zip", _asset_bytes(service, owner))})
    assert uploaded.status_code == 201, uploaded.text
    assert client.get(f"/v1/assets/{uploaded.json()['id']}", headers=owner.headers).status_code == 404
    assert _tree(service.settings.storage_root / "tenants" / owner.name) == owner_files
    # The owner still has everything, unchanged.
    for path in (job, queued, f"/v1/assets/{owner.asset_id}", f"/v1/targets/{owner.target_id}",
                 f"/v1/weights/{owner.weights_id}", f"/v1/backgrounds/{owner.backgrounds_id}"):
        assert client.get(path, headers=owner.headers).status_code == 200, path
    assert client.get(queued, headers=owner.headers).json()["status"] == "queued"


def _asset_bytes(service: Service, owner: Tenant) -> bytes:
    """The owner's asset folder, zipped again (a valid upload for another tenant)."""
    folder = service.settings.storage_root / "tenants" / owner.name / "assets" / owner.asset_id / "upload"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# upload attacks


def _symlink_tar(bundle: tarfile.TarFile) -> None:
    tar_file(bundle, "annotations.json", b"{}")
    info = tarfile.TarInfo("images/escape")
    info.type, info.linkname = tarfile.SYMTYPE, "../../../../etc"
    bundle.addfile(info)


def _hardlink_tar(bundle: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("passwd")
    info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
    bundle.addfile(info)


def _device_tar(bundle: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("null")
    info.type = tarfile.CHRTYPE
    bundle.addfile(info)


def _slip_tar(bundle: tarfile.TarFile) -> None:
    tar_file(bundle, "annotations.json", b"{}")
    tar_file(bundle, "../../../escaped.txt", b"pwned")


BOTH = ("/v1/targets", "/v1/assets")
ATTACKS = {
    "zip symlink": (lambda d: write_zip(d / "link.zip", {"a.json": b"{}"}, symlink="passwd"), 422, "symbolic link"),
    "tar symlink": (lambda d: write_tar(d / "link.tgz", _symlink_tar), 422, "is a link"),
    "tar hard link": (lambda d: write_tar(d / "hard.tgz", _hardlink_tar), 422, "is a link"),
    "tar device": (lambda d: write_tar(d / "dev.tgz", _device_tar), 422, "not a regular file"),
    "zip absolute path": (lambda d: write_zip(d / "abs.zip", {"/tmp/escaped.txt": b"pwned"}), 422, "absolute path"),
    "tar slip": (lambda d: write_tar(d / "slip.tgz", _slip_tar), 422, "points outside the archive"),
    "zip bomb": (lambda d: write_zip(d / "bomb.zip", {"zeros.bin": bytes(16 << 20)}), 413, "expands more than"),
    "wrong type": (lambda d: _write(d / "photo.zip", b"\x89PNG\r\n\x1a\n" + bytes(64)), 422, "not a zip or tar archive"),
    "truncated zip": (lambda d: _write(d / "cut.zip", write_zip(d / "whole.zip", {"a.txt": b"x" * 5000}).read_bytes()[:-30]),
                      422, "cut.zip"),
}
"""Archive attacks, refused by both upload endpoints: (make the upload, status, message)."""
CONTENT_ATTACKS = {
    "malformed COCO": ("/v1/targets", lambda d: write_zip(d / "coco.zip", {"annotations.json": b"{not json",
                                                                          "images/a.png": b"x"}), 422,
                       "no COCO annotation json"),
    "COCO box outside": ("/v1/targets", lambda d: write_zip(d / "box.zip", {"annotations.json": _coco_box_outside(),
                                                                            "images/a.png": _png()}), 422, "outside"),
    "asset not torch": ("/v1/assets", lambda d: write_zip(d / "asset.zip", {"thing/asset.json": b'{"name": "thing"}',
                                                                            "thing/field.pt": b"not torch"}), 422, "thing"),
}
"""Content that is no labelled set or asset, for one endpoint."""


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "PNG")
    return buffer.getvalue()


def _coco_box_outside() -> bytes:
    import json

    return json.dumps({"images": [{"id": 1, "file_name": "images/a.png", "width": 16, "height": 16}],
                       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 40, 40], "area": 1,
                                        "iscrowd": 0}],
                       "categories": [{"id": 1, "name": "thing"}]}).encode()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("attack", sorted(ATTACKS) + sorted(CONTENT_ATTACKS))
def test_upload_attacks_are_refused_and_write_nothing(service: Service, tmp_path: Path, attack: str) -> None:
    if attack in ATTACKS:
        endpoints, (make, status, message) = BOTH, ATTACKS[attack]
    else:
        endpoint, make, status, message = CONTENT_ATTACKS[attack]
        endpoints = (endpoint,)
    archive = make(tmp_path)
    _, headers = service.new_key(f"attacker-{uuid.uuid4().hex[:8]}")
    # Everything under the test's folders: the storage root's parent is where an escape would land.
    watched = service.settings.storage_root.parent
    before = _tree(watched)
    forms = {"/v1/targets": {"name": "real"}, "/v1/assets": {"name": "thing", "kind": "nerfsim"}}
    for path in endpoints:
        response = _upload(service.client, path, headers, archive, **forms[path])
        assert response.status_code == status, (path, response.text)
        detail = response.json()["detail"]
        assert message in detail and archive.name in detail, (path, detail)
        assert str(service.settings.storage_root) not in detail
    assert _tree(watched) == before
    assert not Path("/tmp/escaped.txt").exists() and not (watched.parent / "escaped.txt").exists()
    for listing in ("/v1/targets", "/v1/assets"):
        assert service.client.get(listing, headers=headers).json()["count"] == 0


# --------------------------------------------------------------------------------------------
# rate limits and logs


def test_rate_limits_are_per_key_with_retry_after(service: Service) -> None:
    limited = service.settings.model_copy(update={"rate_limit_per_s": 1.0, "rate_limit_burst": 3})
    with TestClient(create_app(limited)) as client:
        _, first = service.new_key(f"busy-{uuid.uuid4().hex[:8]}")
        _, second = service.new_key(f"calm-{uuid.uuid4().hex[:8]}")
        assert [client.get("/v1/jobs", headers=first).status_code for _ in range(3)] == [200, 200, 200]
        refused = client.get("/v1/jobs", headers=first)
        assert refused.status_code == 429
        assert "rate limit of this API key exceeded (1 requests/s, bursts of 3)" in refused.json()["detail"]
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 2
        # Other keys, and the unauthenticated health checks, are not affected.
        assert client.get("/v1/jobs", headers=second).status_code == 200
        assert all(client.get("/healthz").status_code == 200 for _ in range(10))
        time.sleep(retry_after)
        assert client.get("/v1/jobs", headers=first).status_code == 200
        assert client.get("/v1/jobs", headers=first).status_code == 429


def test_api_keys_never_reach_the_logs(settings: ServiceSettings, tmp_path: Path, small_inputs) -> None:
    settings = settings.model_copy(update={"rate_limit_per_s": 1.0, "rate_limit_burst": 2})
    keys = KeyStore(redis.Redis.from_url(settings.redis_url), Storage(settings.storage_root))
    key, _ = keys.create(f"logged-{uuid.uuid4().hex[:8]}")
    revoked, record = keys.create(f"logged-{uuid.uuid4().hex[:8]}")
    keys.revoke(record.key_id)
    key_id, secret = key.split("_")[1], key.split("_", 2)[2]
    wrong_secret = f"nsk_{key_id}_{'x' * len(secret)}"
    with ApiServer(settings, tmp_path / "api.log") as api:
        with Client(api.url, key, progress=False, retry=RetryPolicy(max_retries=0)) as client:
            client.upload_target(small_inputs[1], "real", format="coco")
            with pytest.raises(ValidationError):
                client.upload_asset(small_inputs[1], "thing", "nerfsim")  # a refused upload is logged
        http = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"})
        for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}, {"Authorization": f"Bearer {revoked}"},
                        {"Authorization": f"Bearer {wrong_secret}"}, {"Authorization": f"Basic {key}"},
                        {"X-API-Key": key[:20]}):
            http.get("/v1/jobs?status=nonsense", headers=headers)
            http.get("/v1/jobs/job-0000000000000000", headers=headers)
        statuses = {http.get("/v1/jobs").status_code for _ in range(5)}
        assert 429 in statuses  # the rate-limited answers were logged too
    log = (tmp_path / "api.log").read_text()
    assert "/v1/jobs/job-0000000000000000" in log and "429" in log  # the requests are in the log...
    for leaked in (key, secret, revoked.split("_", 2)[2], wrong_secret, key[:20]):
        assert leaked not in log  # ...their keys are not
