"""A store in a directory: a shared disk, NFS, or another repository's ``theta/objects``.

The layout is the local store's: ``<root>/aa/bb/<oid>``. A put copies the
source into a temp file beside its final name, hashing it on the way, and
hard-links it into place only when the hash is the oid. ``link()`` never
replaces a file, so two clones pushing the same object at once both succeed
and the object is written whole exactly once. A killed put leaves at most a
``.<oid>-*.tmp`` file, which is never taken for an object.

The root is created on the first put, but its anchor (by default its parent;
the git dir for a repository's own store) must exist: a store on an unmounted
network disk must fail, not quietly fill the mount point.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .base import ObjectStore, RemoteObjectMissingError, StoreUnavailableError
from .local import COPY_CHUNK, LOCAL_WRITE_ERRNOS, is_valid_oid
from .object_format import ObjectFormatError

__all__ = ["DirectoryStore"]


class DirectoryStore(ObjectStore):
    def __init__(self, root: Path, url: str | None = None, anchor: Path | None = None) -> None:
        self.root = Path(root)
        self.url = url or str(self.root)
        self.anchor = anchor or self.root.parent

    def _object_path(self, oid: str) -> Path:
        if not is_valid_oid(oid):
            raise ValueError(f"invalid object id {oid!r}")
        return self.root / oid[0:2] / oid[2:4] / oid

    def _check_reachable(self, oid: str | None = None) -> None:
        if not self.anchor.is_dir():
            raise StoreUnavailableError(self.url, f"{self.anchor} is not a directory", oid=oid)

    def has(self, oid: str) -> bool:
        self._check_reachable(oid)
        return self._object_path(oid).is_file()

    def get(self, oid: str, destination: Path) -> None:
        self._check_reachable(oid)
        try:
            shutil.copyfile(self._object_path(oid), destination)
        except FileNotFoundError:
            raise RemoteObjectMissingError(self.url, oid) from None
        except OSError as exc:
            if exc.errno in LOCAL_WRITE_ERRNOS:
                raise  # writing the local copy failed: not the store's fault; the caller names it
            raise StoreUnavailableError(self.url, exc.strerror or str(exc), oid=oid) from None

    def put(self, oid: str, source: Path) -> bool:
        self._check_reachable(oid)
        final = self._object_path(oid)
        if final.is_file():
            return False
        with open(source, "rb") as reader:
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                fd, temp_name = tempfile.mkstemp(
                    dir=final.parent, prefix=f".{oid[:16]}-", suffix=".tmp"
                )
            except OSError as exc:
                raise StoreUnavailableError(self.url, exc.strerror or str(exc), oid=oid) from None
            temp = Path(temp_name)
            try:
                digest = _copy_hashing(reader, fd)
                if digest != oid:
                    # Never plant a corrupt object where everyone would fetch it.
                    raise ObjectFormatError(oid, f"the local copy hashes to {digest}; not uploaded")
                os.chmod(temp, 0o444)
                os.link(temp, final)
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                raise StoreUnavailableError(self.url, exc.strerror or str(exc), oid=oid) from None
            finally:
                temp.unlink(missing_ok=True)

    def list(self) -> Iterator[str]:
        self._check_reachable()
        if not self.root.is_dir():
            return
        for first in sorted(os.listdir(self.root)):
            if len(first) != 2 or not (self.root / first).is_dir():
                continue
            for second in sorted(os.listdir(self.root / first)):
                if len(second) != 2 or not (self.root / first / second).is_dir():
                    continue
                for name in sorted(os.listdir(self.root / first / second)):
                    if is_valid_oid(name) and name.startswith(first + second):
                        yield name


def _copy_hashing(reader: BinaryIO, fd: int) -> str:
    """Copy ``reader`` into the file descriptor ``fd`` (closing it);
    the sha256 of what was copied.
    """
    digest = hashlib.sha256()
    buffer = bytearray(COPY_CHUNK)
    with os.fdopen(fd, "wb") as writer:
        while count := reader.readinto(buffer):
            chunk = memoryview(buffer)[:count]
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()
