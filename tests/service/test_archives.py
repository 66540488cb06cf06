"""Safe extraction: every unsafe archive is refused with a message naming the member, and
leaves nothing behind."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from service.archives import archive_kind, extract_archive
from service.errors import UploadError, UploadTooLarge

LIMITS = {"max_bytes": 1 << 20, "max_files": 10, "max_ratio": 50.0}


def write_zip(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(info, "/etc/passwd")
    return path


def write_tar(path: Path, add) -> Path:
    with tarfile.open(path, "w:gz") as bundle:
        add(bundle)
    return path


def tar_file(bundle: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    bundle.addfile(info, io.BytesIO(data))


def test_a_plain_zip_and_tar_extract(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "ok.zip", {"a/b.txt": b"hello", "c.txt": b"x"})
    out = extract_archive(archive, tmp_path / "zip", **LIMITS)
    assert (out / "a" / "b.txt").read_bytes() == b"hello" and (out / "c.txt").read_bytes() == b"x"
    archive = write_tar(tmp_path / "ok.tgz", lambda t: tar_file(t, "d/e.txt", b"tar"))
    assert (extract_archive(archive, tmp_path / "tar", **LIMITS) / "d" / "e.txt").read_bytes() == b"tar"


@pytest.mark.parametrize(
    "name, message",
    [("../evil.txt", "points outside the archive"), ("a/../../evil.txt", "points outside the archive"),
     ("/etc/evil.txt", "absolute path")],
)
def test_zip_slip_is_refused(tmp_path: Path, name: str, message: str) -> None:
    archive = write_zip(tmp_path / "slip.zip", {"fine.txt": b"1", name: b"2"})
    with pytest.raises(UploadError, match=message):
        extract_archive(archive, tmp_path / "out", **LIMITS)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()


def test_symbolic_links_are_refused(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "link.zip", {"fine.txt": b"1"}, symlink="passwd")
    with pytest.raises(UploadError, match="'passwd' is a symbolic link"):
        extract_archive(archive, tmp_path / "zip", **LIMITS)

    def links(bundle: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("passwd")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        bundle.addfile(info)

    with pytest.raises(UploadError, match="'passwd' is a link"):
        extract_archive(write_tar(tmp_path / "link.tgz", links), tmp_path / "tar", **LIMITS)

    def hard_link(bundle: tarfile.TarFile) -> None:
        tar_file(bundle, "a.txt", b"1")
        info = tarfile.TarInfo("b.txt")
        info.type, info.linkname = tarfile.LNKTYPE, "a.txt"
        bundle.addfile(info)

    with pytest.raises(UploadError, match="'b.txt' is a link"):
        extract_archive(write_tar(tmp_path / "hard.tgz", hard_link), tmp_path / "hard", **LIMITS)
    assert not any((tmp_path / name).exists() for name in ("zip", "tar", "hard"))


def test_devices_are_refused(tmp_path: Path) -> None:
    def device(bundle: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("null")
        info.type = tarfile.CHRTYPE
        bundle.addfile(info)

    with pytest.raises(UploadError, match="'null' is not a regular file"):
        extract_archive(write_tar(tmp_path / "dev.tgz", device), tmp_path / "out", **LIMITS)


def test_zip_bombs_are_refused(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(4 << 20)})  # 4 MiB of zeros: ~4 KiB zipped
    with pytest.raises(UploadTooLarge, match="expands more than 50 times"):
        extract_archive(archive, tmp_path / "out", **{**LIMITS, "max_bytes": 64 << 20})
    assert not (tmp_path / "out").exists()


def test_size_and_file_count_limits(tmp_path: Path) -> None:
    random_bytes = bytes(range(256)) * 5000  # compresses poorly enough not to trip the ratio check
    archive = write_zip(tmp_path / "big.zip", {"a.bin": random_bytes, "b.bin": random_bytes})
    with pytest.raises(UploadTooLarge, match="expands beyond the size limit"):
        extract_archive(archive, tmp_path / "big", **{**LIMITS, "max_bytes": len(random_bytes) + 10, "max_ratio": 1e6})
    archive = write_zip(tmp_path / "many.zip", {f"{i}.txt": b"x" for i in range(11)})
    with pytest.raises(UploadTooLarge, match="too many files"):
        extract_archive(archive, tmp_path / "many", **LIMITS)


def test_corrupt_and_foreign_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "text.zip").write_text("not an archive")
    with pytest.raises(UploadError, match="text.zip: not a zip or tar archive"):
        extract_archive(tmp_path / "text.zip", tmp_path / "a", **LIMITS)
    good = write_zip(tmp_path / "good.zip", {"a.txt": b"hello" * 1000})
    (tmp_path / "cut.zip").write_bytes(good.read_bytes()[:-30])
    with pytest.raises(UploadError, match="cut.zip"):
        extract_archive(tmp_path / "cut.zip", tmp_path / "b", **LIMITS)


def test_a_member_the_disk_cannot_hold_is_refused_without_server_paths(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "long.zip", {f"photos/{'é' * 200}.jpg": b"x"})  # 400 bytes: over NAME_MAX
    with pytest.raises(UploadError) as caught:
        extract_archive(archive, tmp_path / "out", **LIMITS, display_name="long.zip")
    assert str(caught.value).startswith("long.zip: corrupt archive ([Errno 36] File name too long: 'photos/é")
    assert str(tmp_path) not in str(caught.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode, kind", [("w", "r:"), ("w:gz", "r:gz"), ("w:bz2", "r:bz2"), ("w:xz", "r:xz")])
def test_archives_are_told_apart_by_their_first_bytes(tmp_path: Path, mode: str, kind: str) -> None:
    with tarfile.open(tmp_path / "set.tar", mode) as bundle:
        tar_file(bundle, "a.txt", b"tar")
    assert archive_kind(tmp_path / "set.tar") == kind
    assert (extract_archive(tmp_path / "set.tar", tmp_path / "out", **LIMITS) / "a.txt").read_bytes() == b"tar"
    assert archive_kind(write_zip(tmp_path / "set.zip", {"a.txt": b"zip"})) == "zip"


def test_zeros_are_not_an_empty_tar(tmp_path: Path) -> None:
    """tarfile takes a file of zeros for an empty tar (after trying each decompressor on it)."""
    zeros = tmp_path / "zeros.zip"
    zeros.write_bytes(bytes(1 << 20))
    assert archive_kind(zeros) is None
    with pytest.raises(UploadError, match="zeros.zip: not a zip or tar archive"):
        extract_archive(zeros, tmp_path / "out", **LIMITS)
    assert not (tmp_path / "out").exists()
