"""Uploads of targets and assets: valid ones are listed, every bad one gets a 4xx whose message
names the problem and the file inside the upload, and nothing of a refused upload stays."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from service.api.deps import get_settings
from tests.renderer.meshes import write_box
from service.archives import zip_folder
from tests.service.jobs import upload


def post(client, path: str, headers: dict, archive: Path, **form):
    with open(archive, "rb") as handle:
        return client.post(path, headers=headers, files={"file": (archive.name, handle)}, data=form)


def broken_copy(source: Path, folder: Path, change) -> Path:
    copy = folder / "set"
    shutil.copytree(source, copy)
    change(copy)
    return copy


def assert_nothing_left(client, headers: dict, settings) -> None:
    """A refused upload leaves no record and no files (the scratch area is emptied)."""
    assert client.get("/v1/targets", headers=headers).json()["count"] == 0
    assert client.get("/v1/assets", headers=headers).json()["count"] == 0
    scratch = settings.storage_root / "scratch"
    assert not scratch.exists() or not any(scratch.iterdir())
    tenants = settings.storage_root / "tenants"
    assert not tenants.exists() or not any(tenants.rglob("record.json"))


def test_valid_targets_are_summarised_and_listed(client, make_key, coco_zip: Path, yolo_zip: Path) -> None:
    headers = make_key("acme")
    coco = upload(client, "/v1/targets", headers, coco_zip, name="real", format="coco")
    yolo = upload(client, "/v1/targets", headers, yolo_zip, name="real-yolo", role="test")
    assert coco["format"] == "coco" and yolo["format"] == "yolo"
    assert coco["num_images"] == yolo["num_images"] == 8 and coco["num_boxes"] == yolo["num_boxes"] > 0
    assert coco["class_names"] == yolo["class_names"] == ["box"]
    listed = client.get("/v1/targets", headers=headers).json()
    assert listed["count"] == 2 and [t["id"] for t in listed["data"]] == [yolo["id"], coco["id"]]
    assert client.get("/v1/targets?role=test", headers=headers).json()["data"][0]["id"] == yolo["id"]
    assert client.get("/v1/targets?limit=1&offset=1", headers=headers).json()["data"][0]["id"] == coco["id"]
    assert client.delete(f"/v1/targets/{coco['id']}", headers=headers).status_code == 204
    assert client.get(f"/v1/targets/{coco['id']}", headers=headers).status_code == 404


def _missing_image(folder: Path) -> None:
    (folder / "images" / "000002.png").unlink()


def _box_outside(folder: Path) -> None:
    coco = json.loads((folder / "annotations.json").read_text())
    coco["annotations"][0]["bbox"] = [20, 20, 40, 40]
    (folder / "annotations.json").write_text(json.dumps(coco))


def _escaping_file_name(folder: Path) -> None:
    coco = json.loads((folder / "annotations.json").read_text())
    coco["images"][0]["file_name"] = "../../../../etc/hostname"
    (folder / "annotations.json").write_text(json.dumps(coco))


def _unknown_yolo_class(folder: Path) -> None:
    (folder / "labels" / "000001.txt").write_text("7 0.5 0.5 0.2 0.2\n")


def _escaping_yolo_split(folder: Path) -> None:
    (folder / "data.yaml").write_text("names: [box]\nval: ../../../../etc\n")


def _not_coco(folder: Path) -> None:
    (folder / "annotations.json").write_text(json.dumps({"images": []}))


@pytest.mark.parametrize(
    "change, fmt, status, message",
    [
        (_missing_image, "coco", 422, "set.zip:images/000002.png: missing image file (listed in set.zip:annotations.json)"),
        (_box_outside, "coco", 422, "outside the 32x32 image"),
        (_escaping_file_name, "coco", 422, "'../../../../etc/hostname' points outside the upload"),
        (_unknown_yolo_class, "yolo", 422, "set.zip:labels/000001.txt: line 1: unknown category 7"),
        (_escaping_yolo_split, "yolo", 422, "'../../../../etc' points outside the upload"),
        (_not_coco, "coco", 422, "no COCO annotation json"),
    ],
)
def test_bad_target_sets_are_refused(client, make_key, settings, box_target: Path, tmp_path: Path,
                                     change, fmt: str, status: int, message: str) -> None:
    headers = make_key("acme")
    folder = broken_copy(box_target, tmp_path, change)
    yolo_only = lambda p: p.parts[0] == "labels" or p.name == "data.yaml"  # noqa: E731
    archive = zip_folder(folder, tmp_path / "set.zip", skip=lambda p: p.name.startswith("card") or (
        yolo_only(p) if fmt == "coco" else p.name == "annotations.json"))
    response = post(client, "/v1/targets", headers, archive, name="real", format=fmt)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert str(tmp_path) not in response.json()["detail"] and str(settings.storage_root) not in response.json()["detail"]
    assert_nothing_left(client, headers, settings)


def test_unsafe_and_malformed_archives_are_refused(client, make_key, settings, tmp_path: Path) -> None:
    headers = make_key("acme")
    (tmp_path / "notes.zip").write_text("not an archive")
    response = post(client, "/v1/targets", headers, tmp_path / "notes.zip", name="real")
    assert response.status_code == 422 and "notes.zip: not a zip or tar archive" in response.json()["detail"]

    with zipfile.ZipFile(tmp_path / "slip.zip", "w") as bundle:
        bundle.writestr("annotations.json", "{}")
        bundle.writestr("../../escape.txt", "x")
    response = post(client, "/v1/targets", headers, tmp_path / "slip.zip", name="real")
    assert response.status_code == 422 and "points outside the archive" in response.json()["detail"]

    (tmp_path / "empty.zip").write_bytes(b"")
    response = post(client, "/v1/targets", headers, tmp_path / "empty.zip", name="real")
    assert response.status_code == 422 and "empty upload" in response.json()["detail"]

    response = post(client, "/v1/targets", headers, tmp_path / "slip.zip", name="real", role="training")
    assert response.status_code == 422  # not a role
    assert_nothing_left(client, headers, settings)


def test_uploads_over_the_size_limit_are_refused(client, make_key, settings, coco_zip: Path) -> None:
    headers = make_key("acme")
    client.app.dependency_overrides[get_settings] = lambda: settings.model_copy(update={"max_upload_bytes": 1000})
    try:
        response = post(client, "/v1/targets", headers, coco_zip, name="real")
    finally:
        client.app.dependency_overrides.clear()
    assert response.status_code == 413 and "larger than the 1000 byte upload limit" in response.json()["detail"]
    assert_nothing_left(client, headers, settings)


def test_a_ready_asset_is_usable_at_once(client, make_key, asset_zip: Path) -> None:
    headers = make_key("acme")
    asset = upload(client, "/v1/assets", headers, asset_zip, name="box", kind="nerfsim")
    assert asset["status"] == "ready" and asset["kind"] == "nerfsim"
    assert client.get(f"/v1/assets/{asset['id']}", headers=headers).json()["name"] == "box"
    assert client.get("/v1/assets?status=building", headers=headers).json()["count"] == 0
    assert client.delete(f"/v1/assets/{asset['id']}", headers=headers).status_code == 204
    assert client.get("/v1/assets", headers=headers).json()["count"] == 0


def test_bad_assets_are_refused(client, make_key, settings, box_asset: Path, tmp_path: Path) -> None:
    headers = make_key("acme")
    cases = []
    corrupt = tmp_path / "corrupt"
    shutil.copytree(box_asset, corrupt / "box")
    (corrupt / "box" / "field.pt").write_bytes(b"not torch")
    cases.append((zip_folder(corrupt, tmp_path / "corrupt.zip"), {"kind": "nerfsim"}, "field.pt: corrupt"))
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.txt").write_text("hi")
    nothing = zip_folder(tmp_path / "nothing", tmp_path / "nothing.zip")
    cases.append((nothing, {"kind": "nerfsim"}, "no nerfsim asset description (asset.json)"))
    cases.append((nothing, {"kind": "mesh"}, "no mesh (*.obj)"))
    studio = tmp_path / "studio"
    studio.mkdir()
    (studio / "config.yml").write_text("method_name: nerfacto\n")
    cases.append((zip_folder(studio, tmp_path / "studio.zip"), {"kind": "nerfstudio"},
                  "studio.zip:config.yml: no nerfstudio_models/step-*.ckpt checkpoint"))
    mesh = write_box(tmp_path / "mesh")
    mesh.write_text(mesh.read_text().replace("mtllib box.mtl", "mtllib ../../../etc/box.mtl"))
    cases.append((zip_folder(mesh.parent, tmp_path / "mesh.zip"), {"kind": "mesh"}, "points outside the upload"))
    for archive, form, message in cases:
        response = post(client, "/v1/assets", headers, archive, name="box", **form)
        assert response.status_code == 422 and message in response.json()["detail"], (message, response.text)

    good = zip_folder(write_box(tmp_path / "good").parent, tmp_path / "good.zip")
    response = post(client, "/v1/assets", headers, good, name="a box!", kind="mesh")
    assert response.status_code == 422 and "name" in response.json()["detail"]
    response = post(client, "/v1/assets", headers, good, name="box", kind="mesh", build='{"views": 1}')
    assert response.status_code == 422 and "build" in response.json()["detail"]
    response = post(client, "/v1/assets", headers, good, name="box", kind="mesh", build='{"trainer": {"speed": 9}}')
    assert response.status_code == 422 and "build.trainer" in response.json()["detail"] and "speed" in response.json()["detail"]
    assert_nothing_left(client, headers, settings)
