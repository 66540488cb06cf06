"""API keys and tenants: every endpoint needs a valid key, and no tenant sees, uses, changes or
deletes another tenant's assets, targets or jobs."""

from __future__ import annotations

from pathlib import Path

import redis

from service.cli import main
from service.keys import KeyStore
from service.storage import Storage
from tests.service.jobs import setup_job_inputs, tiny_job


def test_every_endpoint_is_tenant_scoped(client, make_key, asset_zip: Path, coco_zip: Path) -> None:
    owner, other = make_key("owner"), make_key("other")
    asset_id, target_id = setup_job_inputs(client, owner, asset_zip, coco_zip)
    job = client.post("/v1/jobs", headers=owner, json=tiny_job(asset_id, target_id)).json()

    reads = [f"/v1/assets/{asset_id}", f"/v1/targets/{target_id}", f"/v1/jobs/{job['id']}",
             f"/v1/jobs/{job['id']}/artifacts", f"/v1/jobs/{job['id']}/artifacts/psi.json",
             f"/v1/jobs/{job['id']}/events", f"/v1/jobs/{job['id']}/files/samples/x.png"]
    for path in reads:
        response = client.get(path, headers=other)
        assert response.status_code == 404, (path, response.text)
        assert client.get(path).status_code == 401, path
    for path in ("/v1/assets", "/v1/targets", "/v1/jobs"):
        assert client.get(path, headers=other).json() == {"data": [], "count": 0}
        assert client.get(path, headers=owner).json()["count"] == 1
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=other).status_code == 404
    for path in (f"/v1/assets/{asset_id}", f"/v1/targets/{target_id}", f"/v1/jobs/{job['id']}"):
        assert client.delete(path, headers=other).status_code == 404
    # Nor can another tenant build a job on someone else's asset or target.
    response = client.post("/v1/jobs", headers=other, json=tiny_job(asset_id, target_id))
    assert response.status_code == 404 and asset_id in response.json()["detail"]
    own_asset, own_target = setup_job_inputs(client, other, asset_zip, coco_zip)
    response = client.post("/v1/jobs", headers=other, json=tiny_job(own_asset, target_id))
    assert response.status_code == 404 and target_id in response.json()["detail"]
    # The owner still has everything, unchanged.
    assert client.get(f"/v1/jobs/{job['id']}", headers=owner).json()["status"] == "queued"
    assert client.get(f"/v1/assets/{asset_id}", headers=owner).status_code == 200


def test_missing_malformed_unknown_and_revoked_keys_are_refused(client, settings) -> None:
    keys = KeyStore(redis.Redis.from_url(settings.redis_url), Storage(settings.storage_root))
    key, record = keys.create("acme-keys")
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/v1/jobs", headers={"X-API-Key": key}).status_code == 200
    for headers, message in [
        ({}, "missing API key"),
        ({"Authorization": f"Basic {key}"}, "Bearer"),
        ({"Authorization": "Bearer nsk_123"}, "malformed API key"),
        ({"Authorization": f"Bearer {key[:-2]}xx"}, "unknown API key"),
    ]:
        response = client.get("/v1/jobs", headers=headers)
        assert response.status_code == 401 and message in response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"
    keys.revoke(record.key_id)
    response = client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401 and "revoked" in response.json()["detail"]


def test_keys_are_stored_hashed_and_managed_from_the_cli(client, settings, capsys) -> None:
    storage = ["--storage", str(settings.storage_root)]
    assert main(["keys", "create", "--tenant", "cli-tenant", "--name", "ci", *storage]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    key_id = key.split("_")[1]
    stored = (settings.storage_root / "keys" / f"{key_id}.json").read_text()
    assert key.split("_", 2)[2] not in stored and "secret_sha256" in stored
    # Written while the API runs on another Redis URL: the API finds the key through its file.
    assert client.get("/v1/assets", headers={"X-API-Key": key}).status_code == 200
    assert main(["keys", "list", *storage]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "tenant=cli-tenant" in listing and "active" in listing and key.split("_", 2)[2] not in listing
    assert main(["keys", "revoke", key_id, *storage]) == 0
    assert main(["keys", "revoke", "000000000000", *storage]) == 2
    assert "not found" in capsys.readouterr().err
    # The CLI had no Redis to tell (no REDIS_URL, no embedded server): the API learns of the
    # revocation when it restarts (recovery copies key files into Redis).
    client.app.state.keys.reconcile()
    assert client.get("/v1/assets", headers={"X-API-Key": key}).status_code == 401
    assert main(["keys", "create", "--tenant", "Bad Tenant!", *storage]) == 2
