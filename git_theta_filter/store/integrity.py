"""Checking that an object file's bytes hash to its id, and remembering that they did.

Every read that hands out an object's bytes, or builds something on them
(statistics, ``load_state_dict``, a merged file), goes through
:meth:`.LocalStore.open_verified`, which hashes the file before the first use.
The result is remembered for the rest of the process under the file's
``(device, inode, size, mtime, ctime)``: any write to the file changes its
mtime and its ctime, and the ctime cannot be set back, so a file edited after
it was checked has a new key and is hashed again. Files that this process
wrote itself, after hashing what it wrote, are remembered the same way.

Bit rot below the file system changes no time stamp; ``git theta fsck``
re-hashes every object whatever this cache holds.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

from .object_format import ObjectFormatError

__all__ = ["ObjectCorruptError", "VerifiedFiles", "VERIFIED", "file_sha256", "same_bytes"]

_COMPARE_CHUNK = 1 << 20


class ObjectCorruptError(ObjectFormatError):
    """An object file whose bytes do not hash to its id."""

    def __init__(self, oid: str, got: str) -> None:
        super().__init__(oid, f"content hashes to {got}")
        self.got = got


StatKey = tuple[int, int, int, int, int]


def _key(status: os.stat_result) -> StatKey:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


class VerifiedFiles:
    """The versions of object files whose sha256 this process has checked."""

    def __init__(self) -> None:
        self._keys: set[StatKey] = set()
        self._lock = threading.Lock()

    def knows(self, file: io.IOBase) -> bool:
        with self._lock:
            return _key(os.fstat(file.fileno())) in self._keys

    def add(self, file: io.IOBase) -> None:
        key = _key(os.fstat(file.fileno()))
        with self._lock:
            self._keys.add(key)

    def add_path(self, path: Path) -> None:
        """Remember a file this process has just written from bytes it hashed."""
        key = _key(os.stat(path, follow_symlinks=False))
        with self._lock:
            self._keys.add(key)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()


# One per process: a key names a file version, whichever LocalStore opened it.
VERIFIED = VerifiedFiles()


def file_sha256(file: io.RawIOBase | io.BufferedIOBase) -> str:
    """The sha256 of the whole file, read from its start; the position is left at its end."""
    file.seek(0)
    return hashlib.file_digest(file, "sha256").hexdigest()


def same_bytes(
    first: io.RawIOBase | io.BufferedIOBase, second: io.RawIOBase | io.BufferedIOBase
) -> bool:
    """Whether two files hold the same bytes (compared from their starts)."""
    if os.fstat(first.fileno()).st_size != os.fstat(second.fileno()).st_size:
        return False
    first.seek(0)
    second.seek(0)
    left, right = bytearray(_COMPARE_CHUNK), bytearray(_COMPARE_CHUNK)
    while True:
        count = first.readinto(left)
        if second.readinto(right) != count:
            return False
        if count < len(left):  # the last chunk
            return left[:count] == right[:count]
        if left != right:  # whole chunks: one memcmp, no copies
            return False
