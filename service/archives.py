"""Safe extraction of uploaded zip and tar archives.

Refused, with an :class:`UploadError` naming the member: absolute paths and ``..`` (zip-slip),
symbolic and hard links, devices and other special files, more than ``max_files`` members,
more than ``max_bytes`` in all, and members that expand more than ``max_ratio`` times their
compressed size (zip bombs). Sizes are counted while decompressing, not read from headers, which
an attacker writes. Extraction goes to a fresh folder that the caller publishes only when the
whole archive came out.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from service.errors import UploadError, UploadTooLarge

CHUNK = 1 << 20


def _member_path(name: str, archive: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UploadError(f"{archive}: member {name!r} has an absolute path")
    if ".." in path.parts:
        raise UploadError(f"{archive}: member {name!r} points outside the archive ('..')")
    return path


class _Budget:
    """Bytes and files left to extract."""

    def __init__(self, archive: str, max_bytes: int, max_files: int, max_ratio: float) -> None:
        self.archive, self.bytes_left, self.files_left, self.max_ratio = archive, max_bytes, max_files, max_ratio

    def file(self, name: str) -> None:
        self.files_left -= 1
        if self.files_left < 0:
            raise UploadTooLarge(f"{self.archive}: too many files (the limit is reached at {name!r})")

    def copy(self, source, destination: Path, name: str, compressed_size: int | None) -> None:
        written = 0
        # A few KiB of slack: tiny members compress badly and must not count as bombs.
        ratio_limit = None if compressed_size is None else self.max_ratio * compressed_size + 65536
        with open(destination, "wb") as out:
            while chunk := source.read(CHUNK):
                written += len(chunk)
                self.bytes_left -= len(chunk)
                if self.bytes_left < 0:
                    raise UploadTooLarge(f"{self.archive}: expands beyond the size limit (at {name!r})")
                if ratio_limit is not None and written > ratio_limit:
                    raise UploadTooLarge(
                        f"{self.archive}: member {name!r} expands more than {self.max_ratio:g} times "
                        "its compressed size (zip bomb?)"
                    )
                out.write(chunk)


def extract_archive(
    archive: Path, out_dir: Path, *, max_bytes: int, max_files: int, max_ratio: float, display_name: str | None = None
) -> Path:
    """Extract a .zip, .tar, .tar.gz/.tgz, .tar.bz2 or .tar.xz into the new folder ``out_dir``."""
    name = display_name or archive.name
    out_dir.mkdir(parents=True, exist_ok=False)
    budget = _Budget(name, max_bytes, max_files, max_ratio)
    try:
        kind = archive_kind(archive)
        if kind == "zip":
            _extract_zip(archive, out_dir, budget)
        elif kind is not None:
            _extract_tar(archive, out_dir, budget, kind)
        else:
            raise UploadError(f"{name}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
        shutil.rmtree(out_dir, ignore_errors=True)
        # An OSError names the file on the server (a member name too long for the disk): only
        # its path inside the archive is told.
        reason = str(error).replace(str(out_dir) + "/", "")
        raise UploadError(f"{name}: corrupt archive ({reason})") from error
    except UploadError:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return out_dir


TAR_MAGIC = ((b"\x1f\x8b", "r:gz"), (b"BZh", "r:bz2"), (b"\xfd7zXZ\x00", "r:xz"))
"""Leading bytes of the compressed tar streams, with their tarfile mode."""


def archive_kind(archive: Path) -> str | None:
    """'zip', the tarfile mode of a (compressed) tar, or None, from a few bytes of the file:
    ``tarfile.is_tarfile`` decompresses by trial, and takes a file of zeros for an empty tar."""
    if zipfile.is_zipfile(archive):  # reads the end-of-archive record only
        return "zip"
    with open(archive, "rb") as handle:
        head = handle.read(512)
    for magic, mode in TAR_MAGIC:
        if head.startswith(magic):
            return mode
    # A plain tar member header: "ustar" at offset 257 (POSIX and GNU tars).
    return "r:" if head[257:262] == b"ustar" else None


def _extract_zip(archive: Path, out_dir: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as bundle:
        for info in bundle.infolist():
            path = _member_path(info.filename, budget.archive)
            file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip was not made on Unix
            if file_type == stat.S_IFLNK:
                raise UploadError(f"{budget.archive}: member {info.filename!r} is a symbolic link")
            if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UploadError(f"{budget.archive}: member {info.filename!r} is not a regular file")
            if info.flag_bits & 0x1:
                raise UploadError(f"{budget.archive}: member {info.filename!r} is encrypted")
            target = out_dir.joinpath(*path.parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            budget.file(info.filename)
            target.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(info) as source:
                budget.copy(source, target, info.filename, info.compress_size)


def _extract_tar(archive: Path, out_dir: Path, budget: _Budget, mode: str) -> None:
    compressed = archive.stat().st_size
    with tarfile.open(archive, mode) as bundle:
        for member in bundle:
            path = _member_path(member.name, budget.archive)
            if member.issym() or member.islnk():
                raise UploadError(f"{budget.archive}: member {member.name!r} is a link")
            if not (member.isfile() or member.isdir()):
                raise UploadError(f"{budget.archive}: member {member.name!r} is not a regular file")
            target = out_dir.joinpath(*path.parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            budget.file(member.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = bundle.extractfile(member)
            # A tar stream is compressed as a whole: bound each member by the whole archive.
            budget.copy(source, target, member.name, compressed)


def zip_folder(folder: Path, archive: Path, skip: Callable[[Path], bool] | None = None) -> Path:
    """``folder``'s files in a zip, paths relative to ``folder``: what uploads send and what a
    job's folders are published as. ``skip(relative_path)`` true leaves a file out (by default:
    hidden files)."""
    skip = skip or (lambda relative: relative.name.startswith("."))
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and not skip(path.relative_to(folder)):
                bundle.write(path, path.relative_to(folder).as_posix())
    return archive
