"""Background photo sets as a tenant's upload: every photo decoded before anything is stored,
named by id in a job (never by path), resolved in the caller's tenant only, listed in the job's
scene.json as one folder each."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from renderer.scene_spec import load_scene, read_scene_spec
from service.records import RecordStore
from service.job_schemas import JobRecord
from service.storage import Storage
from service.tasks import job_config
from tests.service.jobs import merged, setup_job_inputs, stored_files, tiny_job, upload
from tests.service.test_archives import write_zip


def photo_bytes(width: int, height: int, fmt: str = "JPEG", seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def photos_zip(tmp_path: Path) -> Path:
    """Three photos in two folders (two of the same name), a text file and a Mac resource fork."""
    return write_zip(tmp_path / "kitchen.zip", {
        "kitchen/a.jpg": photo_bytes(64, 48), "kitchen/b.png": photo_bytes(40, 30, "PNG", seed=1),
        f"office/{'é' * 125}.JPG": photo_bytes(64, 48, seed=2), "README.txt": b"shot with a phone",
        "__MACOSX/kitchen/._a.jpg": b"\x00\x05\x16\x07 not an image",
    })


def test_a_photo_set_is_uploaded_listed_read_and_deleted(client, make_key, settings, photos_zip: Path) -> None:
    headers = make_key("acme")
    backgrounds = upload(client, "/v1/backgrounds", headers, photos_zip, name="kitchen")

    assert backgrounds["id"].startswith("backgrounds-") and backgrounds["name"] == "kitchen"
    assert backgrounds["num_images"] == 3 and backgrounds["ignored_files"] == 1
    assert backgrounds["image_sizes"] == {"40x30": 1, "64x48": 2}
    folder = next(Storage(settings.storage_root).tenants_dir().glob(f"*/backgrounds/{backgrounds['id']}")) / "images"
    stored = sorted(p.name for p in folder.iterdir())
    assert stored == ["00000_a.jpg", "00001_b.png", f"00002_{'_' * 60}.jpg"]  # flat, unique, short
    assert backgrounds["size_bytes"] == sum(p.stat().st_size for p in folder.iterdir())
    with zipfile.ZipFile(photos_zip) as bundle:
        assert (folder / f"00002_{'_' * 60}.jpg").read_bytes() == bundle.read(f"office/{'é' * 125}.JPG")
    assert client.get(f"/v1/backgrounds/{backgrounds['id']}", headers=headers).json() == backgrounds
    page = client.get("/v1/backgrounds", headers=headers).json()
    assert page == {"data": [backgrounds], "count": 1}
    assert client.get("/v1/backgrounds?limit=0", headers=headers).status_code == 422

    assert client.delete(f"/v1/backgrounds/{backgrounds['id']}", headers=headers).status_code == 204
    assert client.get(f"/v1/backgrounds/{backgrounds['id']}", headers=headers).status_code == 404
    assert not folder.parent.exists()


def test_a_single_photo_or_a_tar_is_a_set_too(client, make_key, tmp_path: Path) -> None:
    headers = make_key("acme")
    (tmp_path / "wall.webp").write_bytes(photo_bytes(32, 32, "WEBP"))
    single = upload(client, "/v1/backgrounds", headers, tmp_path / "wall.webp", name="wall")
    assert single["num_images"] == 1 and single["image_sizes"] == {"32x32": 1}

    with tarfile.open(tmp_path / "shelf.tar.gz", "w:gz") as bundle:
        for index in range(2):
            data = photo_bytes(20, 10, "PNG", seed=index)
            info = tarfile.TarInfo(f"shelf/{index}.PNG")
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    archive = upload(client, "/v1/backgrounds", headers, tmp_path / "shelf.tar.gz", name="shelf")
    assert archive["num_images"] == 2 and archive["image_sizes"] == {"20x10": 2}


@pytest.mark.parametrize(("members", "message"), [
    ({"notes.txt": b"hello", "__MACOSX/._x.jpg": b"\x00\x05"},
     "kitchen.zip: no image (.bmp, .jpeg, .jpg, .png, .webp) in the upload (1 other files)"),
    ({"a.jpg": photo_bytes(16, 16), "sub/broken.jpg": photo_bytes(16, 16)[:40]},
     "kitchen.zip:sub/broken.jpg: unreadable image"),
    ({"a.jpg": photo_bytes(16, 16), "b.png": b"this is not a png"}, "kitchen.zip:b.png: unreadable image"),
])
def test_a_set_without_a_readable_photo_or_with_a_corrupted_one_is_refused(
        client, make_key, settings, tmp_path: Path, members: dict, message: str) -> None:
    headers = make_key("acme")
    archive = write_zip(tmp_path / "kitchen.zip", members)
    with open(archive, "rb") as handle:
        response = client.post("/v1/backgrounds", headers=headers, files={"file": ("kitchen.zip", handle)},
                               data={"name": "kitchen"})

    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(message), response.text
    assert str(settings.storage_root) not in response.text and str(tmp_path) not in response.text
    assert stored_files(settings.storage_root) == []
    assert not any((settings.storage_root / "scratch").iterdir())
    assert client.get("/v1/backgrounds", headers=headers).json() == {"data": [], "count": 0}


def test_other_single_files_and_too_many_photos_are_refused(client, make_key, settings, tmp_path: Path) -> None:
    headers = make_key("acme")
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "huge.png").write_bytes(photo_bytes(8, 8, "PNG"))
    # A PNG whose header declares 12000 x 12000 pixels: refused from its header, not decoded.
    header = bytearray((tmp_path / "huge.png").read_bytes())
    header[16:24] = (12000).to_bytes(4, "big") * 2
    header[29:33] = zlib.crc32(bytes(header[12:29])).to_bytes(4, "big")
    (tmp_path / "huge.png").write_bytes(bytes(header))
    for name, status, message in [("notes.txt", 422, "notes.txt: neither a zip or tar archive nor an image"),
                                  ("huge.png", 422, "huge.png: image of 12000x12000 pixels is over the limit")]:
        with open(tmp_path / name, "rb") as handle:
            response = client.post("/v1/backgrounds", headers=headers, files={"file": (name, handle)},
                                   data={"name": "x"})
        assert response.status_code == status and response.json()["detail"].startswith(message), response.text
    many = write_zip(tmp_path / "many.zip", {f"{i}.png": photo_bytes(4, 4, "PNG", seed=i) for i in range(4)})
    settings.max_background_images = 3
    with open(many, "rb") as handle:
        response = client.post("/v1/backgrounds", headers=headers, files={"file": ("many.zip", handle)},
                               data={"name": "x"})
    assert response.status_code == 413
    assert response.json()["detail"] == "many.zip: 4 images, more than the limit of 3 per background set"
    assert stored_files(settings.storage_root) == []


def test_a_job_names_background_sets_by_id_in_its_own_tenant_only(client, make_key, asset_zip: Path,
                                                                  coco_zip: Path, photos_zip: Path) -> None:
    owner, other = make_key("owner"), make_key("other")
    owned = upload(client, "/v1/backgrounds", owner, photos_zip, name="kitchen")
    asset_id, target_id = setup_job_inputs(client, other, asset_zip, coco_zip)

    stolen = client.post("/v1/jobs", headers=other, json=tiny_job(asset_id, target_id, scene={"backgrounds": [owned["id"]]}))
    missing = client.post("/v1/jobs", headers=other,
                          json=tiny_job(asset_id, target_id, scene={"backgrounds": ["backgrounds-0123456789abcdef"]}))
    assert stolen.status_code == missing.status_code == 404
    assert stolen.json()["detail"] == f"backgrounds {owned['id']} not found"
    assert client.get(f"/v1/backgrounds/{owned['id']}", headers=other).status_code == 404
    assert client.delete(f"/v1/backgrounds/{owned['id']}", headers=other).status_code == 404

    for backgrounds in (["/abs/photos"], "backgrounds-0123456789abcdef", ["backgrounds-0123456789abcdef"] * 2,
                        [f"backgrounds-{i:016x}" for i in range(33)]):
        response = client.post("/v1/jobs", headers=other, json=tiny_job(asset_id, target_id, scene={"backgrounds": backgrounds}))
        assert response.status_code == 422, response.text
        assert "backgrounds" in json.dumps(response.json()["detail"])
    assert client.get("/v1/jobs", headers=other).json()["count"] == 0


def test_a_job_lists_its_background_folders_in_its_scene(client, make_key, settings, asset_zip: Path, coco_zip: Path,
                                                         photos_zip: Path, tmp_path: Path) -> None:
    headers = make_key("acme")
    asset_id, target_id = setup_job_inputs(client, headers, asset_zip, coco_zip)
    first = upload(client, "/v1/backgrounds", headers, photos_zip, name="kitchen")
    (tmp_path / "wall.png").write_bytes(photo_bytes(24, 24, "PNG"))
    second = upload(client, "/v1/backgrounds", headers, tmp_path / "wall.png", name="wall")
    request = tiny_job(asset_id, target_id, scene={"backgrounds": [second["id"], first["id"]]})
    del request["scene"]["procedural_backgrounds"]
    response = client.post("/v1/jobs", headers=headers, json=request)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["spec"]["scene"]["backgrounds"] == [second["id"], first["id"]]
    assert "procedural_backgrounds" not in job["spec"]["scene"]
    # In use by a queued job: not deletable.
    conflict = client.delete(f"/v1/backgrounds/{first['id']}", headers=headers)
    assert conflict.status_code == 409
    assert conflict.json()["detail"] == f"backgrounds {first['id']} are used by job {job['id']}, which is queued"

    store = RecordStore(redis.Redis.from_url(settings.redis_url), Storage(settings.storage_root))
    tenant = next(store.storage.tenants_dir().glob(f"*/jobs/{job['id']}")).parent.parent.name
    config = job_config(store.get(JobRecord, tenant, job["id"]), store)

    scene = config.scene.spec  # inline: no scene.json
    folders = [str(store.storage.record_dir("backgrounds", tenant, b["id"]) / "images") for b in (second, first)]
    assert scene["backgrounds"] == folders and scene["procedural_backgrounds"] is None  # the fallback: none here
    _, backgrounds = load_scene(read_scene_spec(config.scene.spec))
    assert len(backgrounds) == 4 and [tuple(image.shape) for image in backgrounds.images[:2]] == [(3, 24, 24),
                                                                                                 (3, 48, 64)]

    # Without photos the procedural textures are the fallback; asked for, they come with the photos.
    for changes, procedural in (({"backgrounds": []}, 4), ({"procedural_backgrounds": 2}, 2)):
        created = client.post("/v1/jobs", headers=headers, json=merged(request, {"scene": changes})).json()
        config = job_config(store.get(JobRecord, tenant, created["id"]), store)
        names = load_scene(read_scene_spec(config.scene.spec))[1].names
        assert sum(name.startswith("procedural_") for name in names) == procedural

    # Photos alone are something to draw: no plain colours and no textures is then fine.
    photos_only = merged(request, {"psi": {"initial": {"plain_background": False}}, "scene": {"procedural_backgrounds": 0}})
    assert client.post("/v1/jobs", headers=headers, json=photos_only).status_code == 201
    nothing = client.post("/v1/jobs", headers=headers, json=merged(photos_only, {"scene": {"backgrounds": []}}))
    assert nothing.status_code == 422 and "nothing to draw" in nothing.text

    for queued in client.get("/v1/jobs", headers=headers).json()["data"]:
        client.post(f"/v1/jobs/{queued['id']}/cancel", headers=headers)
    assert client.delete(f"/v1/backgrounds/{second['id']}", headers=headers).status_code == 204


def test_a_job_over_the_photo_limit_is_refused(client, make_key, settings, asset_zip: Path, coco_zip: Path,
                                               photos_zip: Path) -> None:
    headers = make_key("acme")
    asset_id, target_id = setup_job_inputs(client, headers, asset_zip, coco_zip)
    sets = [upload(client, "/v1/backgrounds", headers, photos_zip, name=f"kitchen {i}")["id"] for i in range(2)]
    settings.max_background_images = 5
    response = client.post("/v1/jobs", headers=headers, json=tiny_job(asset_id, target_id, scene={"backgrounds": sets}))
    assert response.status_code == 422
    assert response.json()["detail"] == "scene.backgrounds: the sets hold 6 photos together, more than the limit of 5 per job"
