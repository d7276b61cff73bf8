"""Git LFS pointers, and the local git-lfs object storage they point into.

A repository that kept its models in git-lfs has, in history, small text
blobs in place of the models. Git LFS specifies them (``docs/spec.md`` in the
git-lfs repository) as UTF-8 lines ``key value``, ``version`` first, the other
keys sorted, the whole under 1024 bytes::

    version https://git-lfs.github.com/spec/v1
    oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393
    size 12345

The object itself lives in ``<lfs storage>/objects/OID[0:2]/OID[2:4]/OID``,
where the storage is ``<git common dir>/lfs`` unless the user's git config
sets ``lfs.storage`` (relative to the git dir). git-lfs's pointer extensions
(``ext-0-…`` lines) are not supported: such a blob is not read as a pointer.

Pointers come from history that someone else may have written: the oid must
be 64 hex digits before it becomes part of a path, and the object's bytes are
checked against the oid and size wherever they are read.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import ThetaError
from .store.object_format import is_valid_oid

__all__ = [
    "MAX_POINTER_BYTES",
    "LfsPointer",
    "LfsStorage",
    "LfsObjectMissingError",
    "LfsObjectCorruptError",
    "parse_lfs_pointer",
    "looks_like_lfs_pointer",
    "check_object",
]

MAX_POINTER_BYTES = 1024
_VERSION_LINE = b"version https://git-lfs.github.com/spec/v1\n"
_POINTER_RE = re.compile(
    rb"version https://git-lfs\.github\.com/spec/v1\n"
    rb"oid sha256:([0-9a-f]{64})\n"
    rb"size (0|[1-9][0-9]{0,18})\n\Z"
)
_COPY_CHUNK = 1 << 20


class LfsObjectMissingError(ThetaError):
    """A git-lfs pointer whose object is not in the local git-lfs storage."""

    def __init__(self, path: str, oid: str, where: str | None = None) -> None:
        at = f" at {where}" if where else ""
        super().__init__(
            f"{path}{at} is a git-lfs pointer, and its object sha256:{oid} is not in "
            ".git/lfs/objects",
            hint="run `git lfs fetch --all` to download every version's object, then try again",
        )
        self.path = path
        self.oid = oid
        self.where = where


class LfsObjectCorruptError(ThetaError):
    """A local git-lfs object whose bytes do not match its pointer."""

    def __init__(self, path: str, oid: str, detail: str) -> None:
        super().__init__(
            f"{path}: the git-lfs object sha256:{oid} in .git/lfs/objects is corrupt ({detail})",
            hint=f"delete it and run `git lfs fetch --all` to download it again: "
            f"rm .git/lfs/objects/{oid[0:2]}/{oid[2:4]}/{oid}",
        )
        self.path = path
        self.oid = oid


@dataclass(frozen=True)
class LfsPointer:
    oid: str  # sha256 of the file, 64 lowercase hex digits
    size: int

    def render(self) -> bytes:
        """The one canonical encoding, as ``git lfs clean`` writes it."""
        return _VERSION_LINE + f"oid sha256:{self.oid}\nsize {self.size}\n".encode()


def looks_like_lfs_pointer(data: bytes) -> bool:
    return data.startswith(_VERSION_LINE) and len(data) < MAX_POINTER_BYTES


def parse_lfs_pointer(data: bytes) -> LfsPointer | None:
    """The pointer in ``data``, or None when ``data`` is not a canonical git-lfs pointer."""
    if not looks_like_lfs_pointer(data):
        return None
    match = _POINTER_RE.match(data)
    if match is None:
        return None
    return LfsPointer(match.group(1).decode(), int(match.group(2)))


class LfsStorage:
    """git-lfs's local object directory, read and written as git-lfs lays it out."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"

    @classmethod
    def for_git_dirs(cls, git_dir: Path, common_dir: Path, configured: str | None) -> LfsStorage:
        """``lfs.storage`` when the user's git config sets it, else ``<common dir>/lfs``."""
        if configured:
            path = Path(configured).expanduser()
            return cls(path if path.is_absolute() else git_dir / path)
        return cls(common_dir / "lfs")

    def object_path(self, oid: str) -> Path:
        if not is_valid_oid(oid):  # a git-lfs oid is a sha256 too
            raise ThetaError(f"invalid git-lfs object id {oid!r}")
        return self.objects_dir / oid[0:2] / oid[2:4] / oid

    def has(self, pointer: LfsPointer) -> bool:
        try:
            return self.object_path(pointer.oid).stat().st_size == pointer.size
        except FileNotFoundError:
            return False

    def open(self, pointer: LfsPointer, path: str, where: str | None = None) -> io.FileIO:
        """The object's file, unbuffered; :class:`LfsObjectMissingError` when absent.

        It must be a regular file of the pointer's size, checked before a byte is
        read: a FIFO would block, a device (a link to ``/dev/zero``) never end, and
        a longer file would be read whole before its sha256 could fail.
        """
        try:
            fd = os.open(self.object_path(pointer.oid), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LfsObjectMissingError(path, pointer.oid, where) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != pointer.size:
            os.close(fd)
            detail = (
                f"{info.st_size} bytes, the pointer says {pointer.size}"
                if stat.S_ISREG(info.st_mode)
                else "not a regular file"
            )
            raise LfsObjectCorruptError(path, pointer.oid, detail)
        os.set_blocking(fd, True)
        return io.FileIO(fd, "rb")

    def copy_verified(
        self, pointer: LfsPointer, path: str, write: Callable[[memoryview], object]
    ) -> None:
        """Stream the object to ``write``, then check its size and sha256 against the pointer.

        The check comes last: a mismatch raises after the bytes went out, and
        the caller (the filter) reports the file as failed.
        """
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray(_COPY_CHUNK)
        with self.open(pointer, path) as file:
            while count := file.readinto(buffer):
                chunk = memoryview(buffer)[:count]
                digest.update(chunk)
                size += count
                write(chunk)
        check_object(pointer, path, size, digest.hexdigest())

    def store(self, pointer: LfsPointer, fill: Callable[[BinaryIO], None]) -> None:
        """Write an object that ``fill`` produces, unless it is already there.

        Written to ``tmp/`` and renamed into place, as git-lfs does. ``fill``
        must write exactly the pointer's bytes; the caller has checked them
        (a smudge verifies the sha256 of what it writes).
        """
        if self.has(pointer):
            return
        final = self.object_path(pointer.oid)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.tmp_dir / f"{pointer.oid}.theta-tmp"
        try:
            with open(temporary, "wb") as file:
                fill(file)
            final.parent.mkdir(parents=True, exist_ok=True)
            temporary.replace(final)
        finally:
            temporary.unlink(missing_ok=True)


def check_object(pointer: LfsPointer, path: str, size: int, sha256: str) -> None:
    """Raise :class:`LfsObjectCorruptError` unless ``size`` and ``sha256`` are the pointer's."""
    if size != pointer.size:
        raise LfsObjectCorruptError(
            path, pointer.oid, f"{size} bytes, the pointer says {pointer.size}"
        )
    if sha256 != pointer.oid:
        raise LfsObjectCorruptError(path, pointer.oid, f"content hashes to {sha256}")
