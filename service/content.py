"""Uploads: streamed to disk under a size limit, extracted safely, and their content checked.

A labelled target set is validated completely on upload (the readers of ``detector.datasets``
decode every image and check every box), and so are detector weights (read with the safe loader
of :mod:`detector.checkpoint`: a file naming anything but Ultralytics detection layers is refused
before any of it is unpickled) and background photo sets (every image decoded once, under the
labelled sets' pixel limit); an asset's files are checked for what can be checked
without heavy work (the expected files exist, and no file reference leaves the upload), the rest
happens in its asset-building job. Error messages name files as they are inside the upload,
never by their path on the server.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import yaml
from fastapi import UploadFile

from service.archives import archive_kind, extract_archive
from service.errors import UploadError, UploadTooLarge
from service.schemas import AssetKind, TargetFormat
from service.settings import ServiceSettings

CHUNK = 1 << 20


async def save_upload(upload: UploadFile, destination: Path, max_bytes: int) -> Path:
    """Stream ``upload`` to ``destination``; :class:`UploadTooLarge` past ``max_bytes``."""
    written = 0
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open(destination, "wb") as out:
        while chunk := await upload.read(CHUNK):
            written += len(chunk)
            if written > max_bytes:
                out.close()
                destination.unlink(missing_ok=True)
                raise UploadTooLarge(f"{upload.filename}: larger than the {max_bytes} byte upload limit")
            out.write(chunk)
    if written == 0:
        destination.unlink(missing_ok=True)
        raise UploadError(f"{upload.filename}: empty upload")
    return destination


def extract_upload(archive: Path, out_dir: Path, settings: ServiceSettings, display_name: str) -> Path:
    return extract_archive(
        archive, out_dir, max_bytes=settings.max_extracted_bytes, max_files=settings.max_archive_files,
        max_ratio=settings.max_compression_ratio, display_name=display_name,
    )


def unpack_asset_upload(upload: Path, out_dir: Path, settings: ServiceSettings, upload_name: str, kind: AssetKind) -> Path:
    """The new folder ``out_dir`` with the asset's files: an archive's, or for a ``splat`` the
    ``.ply`` itself when it was uploaded bare."""
    if kind == "splat" and archive_kind(upload) is None:
        if not upload_name.lower().endswith(".ply"):
            raise UploadError(f"{upload_name}: neither a zip or tar archive nor a splat .ply file")
        out_dir.mkdir(parents=True)
        os.replace(upload, out_dir / Path(upload_name).name)
        return out_dir
    return extract_upload(upload, out_dir, settings, upload_name)


class _Namer:
    """Rewrites server paths in messages to paths inside the upload."""

    def __init__(self, root: Path, upload_name: str) -> None:
        self.root, self.upload_name = root.resolve(), upload_name

    def __call__(self, text: str) -> str:
        return text.replace(str(self.root) + "/", f"{self.upload_name}:").replace(str(self.root), self.upload_name)


def _inside(root: Path, reference: str, where: str, namer: _Namer) -> Path:
    """``root / reference`` if it stays inside ``root`` (no absolute paths, no way out)."""
    path = (root / reference).resolve()
    if Path(reference).is_absolute() or not path.is_relative_to(root.resolve()):
        raise UploadError(namer(f"{where}: {reference!r} points outside the upload"))
    return path


def _single(root: Path, pattern: str, what: str, namer: _Namer) -> Path:
    found = sorted(p for p in root.rglob(pattern) if p.is_file() and not any(s.startswith(".") for s in p.parts))
    if not found:
        raise UploadError(f"{namer.upload_name}: no {what} ({pattern}) in the upload")
    if len(found) > 1:
        names = ", ".join(namer(str(p)) for p in found[:4])
        raise UploadError(f"{namer.upload_name}: several {what}s ({names}); upload one per asset or target")
    return found[0]


# --------------------------------------------------------------------------------------------
# targets


def check_target(root: Path, upload_name: str, declared: TargetFormat | None) -> tuple[TargetFormat, Path, dict]:
    """Validate the labelled set extracted to ``root``: its format, the path to read it from,
    and a summary (images, boxes, class names). Raises :class:`UploadError` naming the problem."""
    from detector.datasets import load_coco, load_yolo
    from detector.errors import DatasetError

    namer = _Namer(root, upload_name)
    has_yaml = any(root.rglob("data.yaml"))
    fmt: TargetFormat = declared or ("yolo" if has_yaml else "coco")
    try:
        if fmt == "yolo":
            data_yaml = _single(root, "data.yaml", "YOLO data.yaml", namer)
            split = _check_yolo_yaml(data_yaml, namer)
            labelled = load_yolo(data_yaml.parent, split=split)
            data_path = data_yaml.parent
        else:
            candidates = [p for p in root.rglob("*.json") if not any(s.startswith(".") for s in p.parts)]
            coco = [p for p in candidates if _looks_like_coco(p)]
            if not coco:
                raise UploadError(f"{upload_name}: no COCO annotation json (with 'images', 'annotations', "
                                  "'categories') in the upload")
            if len(coco) > 1:
                raise UploadError(f"{upload_name}: several COCO annotation files "
                                  f"({', '.join(namer(str(p)) for p in coco[:4])}); upload one set per target")
            _check_coco_files(coco[0], namer)
            labelled = load_coco(coco[0])
            data_path = coco[0]
    except DatasetError as error:
        raise UploadError(namer(str(error))) from error
    summary = {
        "num_images": len(labelled),
        "num_boxes": int(sum(len(item.boxes) for item in labelled.images)),
        "class_names": labelled.class_names,
    }
    return fmt, data_path, summary


def _looks_like_coco(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False
    return isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data)


def _check_coco_files(json_path: Path, namer: _Namer) -> None:
    images = json.loads(json_path.read_text())["images"]
    for entry in images if isinstance(images, list) else []:  # load_coco says what is wrong with the rest
        if isinstance(entry, dict) and isinstance(entry.get("file_name"), str):
            _inside(json_path.parent, entry["file_name"], namer(f"{json_path}: image {entry.get('id')}"), namer)


def _check_yolo_yaml(data_yaml: Path, namer: _Namer) -> str:
    """The split to read (val, else test, else train); drops a ``path`` entry that points
    elsewhere (exports often carry the exporter's absolute path), refuses split folders
    outside the upload."""
    try:
        data = yaml.safe_load(data_yaml.read_text())
    except yaml.YAMLError as error:
        raise UploadError(namer(f"{data_yaml}: not valid YAML ({error})")) from error
    if not isinstance(data, dict):
        raise UploadError(namer(f"{data_yaml}: not a YOLO data.yaml (expected a mapping with 'names')"))
    if "path" in data:
        del data["path"]
        data_yaml.write_text(yaml.safe_dump(data))
    split = next((s for s in ("val", "test", "train") if isinstance(data.get(s), str)), None)
    if split is None:
        raise UploadError(namer(f"{data_yaml}: no 'val', 'test' or 'train' folder entry"))
    _inside(data_yaml.parent, data[split], namer(f"{data_yaml}: '{split}'"), namer)
    return split


# --------------------------------------------------------------------------------------------
# assets


def check_asset(root: Path, upload_name: str, kind: AssetKind) -> Path:
    """The file or folder the asset is built or loaded from, after the checks that need no
    heavy work: the nerfsim asset folder, the nerfstudio ``config.yml``, the posed image set's
    ``transforms.json``, the mesh's ``.obj`` or the splat's ``.ply`` (read whole: a bad one is
    refused here, naming what is wrong)."""
    namer = _Namer(root, upload_name)
    if kind == "nerfsim":
        from renderer.splat_asset import is_splat_asset, load_splat_asset
        from renderer.train_object import AssetError, load_object_asset

        folder = _single(root, "asset.json", "nerfsim asset description", namer).parent
        try:
            (load_splat_asset if is_splat_asset(folder) else load_object_asset)(folder)
        except AssetError as error:
            raise UploadError(namer(str(error))) from error
        return folder
    if kind == "splat":
        from renderer.splat import SplatError
        from renderer.splat_ply import load_splat_ply

        ply = _single(root, "*.ply", "splat file", namer)
        try:
            load_splat_ply(ply)
        except SplatError as error:
            bare = ply.name == upload_name  # uploaded as itself, not in an archive
            raise UploadError(str(error).replace(str(ply), upload_name) if bare else namer(str(error))) from error
        return ply
    if kind == "nerfstudio":
        config = _single(root, "config.yml", "nerfstudio config", namer)
        if not any((config.parent / "nerfstudio_models").glob("step-*.ckpt")):
            raise UploadError(namer(f"{config}: no nerfstudio_models/step-*.ckpt checkpoint beside it"))
        return config
    if kind == "posed-images":
        transforms = _single(root, "transforms.json", "posed image set transforms", namer)
        try:
            frames = json.loads(transforms.read_text()).get("frames")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
            raise UploadError(namer(f"{transforms}: not a transforms.json ({error})")) from error
        if not isinstance(frames, list) or not frames:
            raise UploadError(namer(f"{transforms}: no frames"))
        for index, frame in enumerate(frames):
            for key in ("file_path", "mask_path"):
                if isinstance(frame, dict) and isinstance(frame.get(key), str):
                    _inside(transforms.parent, frame[key], namer(f"{transforms}: frame {index} {key}"), namer)
        return transforms
    mesh = _single(root, "*.obj", "mesh", namer)
    for line in mesh.read_text(errors="replace").splitlines():
        if line.startswith("mtllib "):
            for name in line.split()[1:]:
                material = _inside(mesh.parent, name, namer(f"{mesh}: mtllib"), namer)
                if material.is_file():
                    for texture in re.findall(r"^\s*map_Kd\s+(?:-\S+\s+\S+\s+)*(\S.*?)\s*$",
                                              material.read_text(errors="replace"), re.M):
                        _inside(material.parent, texture, namer(f"{material}: map_Kd"), namer)
    return mesh


# --------------------------------------------------------------------------------------------
# weights


def check_weights(path: Path, upload_name: str) -> dict:
    """The summary of the YOLO detection checkpoint at ``path`` (class names, parameters, scale,
    yaml), read without running any of its code; :class:`UploadError` naming the problem."""
    from detector.checkpoint import read_detector_checkpoint
    from detector.errors import DetectorError

    try:
        checkpoint = read_detector_checkpoint(path)
    except DetectorError as error:
        raise UploadError(str(error).replace(str(path), upload_name)) from error
    return {"class_names": checkpoint.class_names, "parameters": checkpoint.parameters,
            "scale": checkpoint.scale, "yaml_file": checkpoint.yaml_file}


# --------------------------------------------------------------------------------------------
# backgrounds


def _hidden(relative: Path) -> bool:
    """Dot files and folders, and the ``__MACOSX`` resource forks of zips made on a Mac (whose
    ``._photo.jpg`` entries are not images)."""
    return any(part.startswith(".") or part == "__MACOSX" for part in relative.parts)


def store_backgrounds(upload: Path, scratch: Path, images_dir: Path, settings: ServiceSettings,
                      upload_name: str) -> dict:
    """Check the background photos of ``upload`` (a zip or tar of photos, or one photo, told
    apart by their leading bytes) and move them into the new flat folder ``images_dir``; the
    record's summary (count, sizes). Each image is decoded once, with the labelled sets' reader
    and its pixel limit; files of other types are left out and counted. :class:`UploadError`
    names the first unreadable photo, or says that the upload holds none."""
    from renderer.backgrounds import IMAGE_SUFFIXES  # what the renderer reads from the folder

    if archive_kind(upload) is not None:
        root = extract_upload(upload, scratch / "data", settings, upload_name)
        files = sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p.relative_to(root)))
        shown = {p: f"{upload_name}:{p.relative_to(root).as_posix()}" for p in files}
    else:
        files, shown = [upload], {upload: upload_name}
        if Path(upload_name).suffix.lower() not in IMAGE_SUFFIXES:
            raise UploadError(f"{upload_name}: neither a zip or tar archive nor an image "
                              f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    photos = [p for p in files if shown[p].lower().endswith(tuple(IMAGE_SUFFIXES))]
    if not photos:
        raise UploadError(f"{upload_name}: no image ({', '.join(sorted(IMAGE_SUFFIXES))}) in the upload"
                          f"{f' ({len(files)} other files)' if files else ''}")
    if len(photos) > settings.max_background_images:
        raise UploadTooLarge(f"{upload_name}: {len(photos)} images, more than the limit of "
                             f"{settings.max_background_images} per background set")
    sizes = Counter(_photo_size(path, shown[path]) for path in photos)
    images_dir.mkdir(parents=True)
    for index, path in enumerate(photos):  # flat (the renderer reads one level), unique and short names
        original = Path(shown[path])
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", original.stem)[:60]
        os.replace(path, images_dir / f"{index:05d}_{stem}{original.suffix.lower()}")
    return {"num_images": len(photos), "image_sizes": {f"{w}x{h}": n for (w, h), n in sorted(sizes.items())},
            "ignored_files": len(files) - len(photos), "size_bytes": sum(p.stat().st_size for p in images_dir.iterdir())}


def _photo_size(path: Path, shown: str) -> tuple[int, int]:
    """(width, height) of a photo, decoded once; :class:`UploadError` naming it as ``shown``."""
    from detector.datasets import _decode  # the reader (and pixel limit) of the labelled sets
    from detector.errors import DatasetError

    try:
        height, width = _decode(path).shape[:2]
    except DatasetError as error:
        raise UploadError(str(error).replace(str(path), shown)) from error
    return width, height
