"""A store in a directory: a shared disk, NFS, or another repository's ``theta/objects``.

The layout is the local store's: ``<root>/aa/bb/<oid>``. A put copies the
source into a temp file beside its final name, hashing it on the way, and
hard-links it into place only when the hash is the oid. ``link()`` never
replaces a file, so two clones pushing the same object at once both succeed
and the object is written whole exactly once. A killed put leaves at most a
``.<oid>-*.tmp`` file, which is never taken for an object.

Neither a get nor a put follows a symbolic link below the root (a put opens
the object's directory as a get does, and writes relative to it), and a get
opens nothing but a regular file (``O_NOFOLLOW``, ``O_NONBLOCK``, then ``fstat``): a FIFO that
would block, a device that never ends, or a link to a file elsewhere is
refused by name. The bytes go into an ``ObjectSink``, which cuts off a file
longer than the object.

The root is created on the first put, but its anchor (by default its parent;
the git dir for a repository's own store) must exist: a store on an unmounted
network disk must fail, not quietly fill the mount point.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from .base import ObjectStore, RemoteObjectMissingError, StoreError, StoreUnavailableError
from .local import COPY_CHUNK
from .object_format import ObjectFormatError, is_valid_oid
from .sink import ObjectSink

__all__ = ["DirectoryStore", "StoreFileRefusedError"]

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class StoreFileRefusedError(StoreError):
    """An object file in a directory store that is a symbolic link or not a regular file."""

    def __init__(self, url: str, oid: str, what: str) -> None:
        super().__init__(
            url,
            f"{what}; refused",
            oid=oid,
            hint="replace it in the store with the object itself, from a clone that has it "
            "(`git theta push --all`)",
        )


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

    def get(self, oid: str, sink: ObjectSink) -> None:
        self._check_reachable(oid)
        fd = self._open_object(oid)
        with os.fdopen(fd, "rb", buffering=0) as reader:
            buffer = bytearray(COPY_CHUNK)
            while True:
                try:
                    count = reader.readinto(buffer)
                except OSError as exc:
                    raise StoreUnavailableError(
                        self.url, exc.strerror or str(exc), oid=oid
                    ) from None
                if not count:
                    return
                # A failure to write the local copy is not the store's: the caller names it.
                sink.write(memoryview(buffer)[:count])

    def _open_object(self, oid: str) -> int:
        """A blocking descriptor of the object file, reached without following a link below
        the root; anything but a regular file is refused before a byte is read."""
        relative = self._object_path(oid).relative_to(self.root).parts
        try:
            parent = os.open(self.root, _DIRECTORY_FLAGS & ~os.O_NOFOLLOW)
        except FileNotFoundError:
            raise RemoteObjectMissingError(self.url, oid) from None
        except OSError as exc:
            raise StoreUnavailableError(self.url, exc.strerror or str(exc), oid=oid) from None
        try:
            for name in relative[:-1]:
                child = self._open_below(parent, name, _DIRECTORY_FLAGS, oid)
                os.close(parent)
                parent = child
            fd = self._open_below(parent, relative[-1], _FILE_FLAGS, oid)
        finally:
            os.close(parent)
        kind = os.fstat(fd).st_mode
        if not stat.S_ISREG(kind):
            os.close(fd)
            what = "a FIFO" if stat.S_ISFIFO(kind) else "a device, socket or directory"
            raise StoreFileRefusedError(self.url, oid, f"is {what}, not a regular file")
        os.set_blocking(fd, True)
        return fd

    def _open_below(self, parent: int, name: str, flags: int, oid: str) -> int:
        try:
            return os.open(name, flags, dir_fd=parent)
        except FileNotFoundError:
            raise RemoteObjectMissingError(self.url, oid) from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                # O_NOFOLLOW refuses a link (ELOOP); O_DIRECTORY a link or a file on the way.
                is_link = stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
                kind = "a symbolic link" if is_link else "not a directory"
                what = f"is {kind}" if name == oid else f"its directory {name} is {kind}"
                raise StoreFileRefusedError(self.url, oid, what) from None
            raise StoreUnavailableError(self.url, exc.strerror or str(exc), oid=oid) from None

    def put(self, oid: str, source: Path) -> bool:
        self._check_reachable(oid)
        with open(source, "rb") as reader:
            parent = self._directory_for_put(oid)
            try:
                try:
                    os.stat(oid, dir_fd=parent, follow_symlinks=False)
                    return False  # there already (if damaged or a link, a get names it)
                except FileNotFoundError:
                    pass
                temp_name = f".{oid[:16]}-{secrets.token_hex(8)}.tmp"
                try:
                    fd = os.open(temp_name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
                except OSError as exc:
                    raise StoreUnavailableError(
                        self.url, exc.strerror or str(exc), oid=oid
                    ) from None
                try:
                    digest = _copy_hashing(reader, fd)
                    if digest != oid:
                        # Never plant a corrupt object where everyone would fetch it.
                        raise ObjectFormatError(
                            oid, f"the local copy hashes to {digest}; not uploaded"
                        )
                    os.chmod(temp_name, 0o444, dir_fd=parent)
                    os.link(temp_name, oid, src_dir_fd=parent, dst_dir_fd=parent)
                    return True
                except FileExistsError:
                    return False
                except OSError as exc:
                    raise StoreUnavailableError(
                        self.url, exc.strerror or str(exc), oid=oid
                    ) from None
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temp_name, dir_fd=parent)
            finally:
                os.close(parent)

    def _directory_for_put(self, oid: str) -> int:
        """A descriptor of the object's directory ``aa/bb``, made if missing, reached
        as a get reaches it: through no symbolic link below the root (one planted in a
        shared store would send the object file anywhere the pusher can write)."""
        self._object_path(oid)  # a valid id, or ValueError: it names the file below
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            parent = os.open(self.root, _DIRECTORY_FLAGS & ~os.O_NOFOLLOW)
        except OSError as exc:
            raise StoreUnavailableError(self.url, exc.strerror or str(exc), oid=oid) from None
        try:
            for name in (oid[0:2], oid[2:4]):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, dir_fd=parent)
                child = self._open_below(parent, name, _DIRECTORY_FLAGS, oid)
                os.close(parent)
                parent = child
        except BaseException:
            os.close(parent)
            raise
        return parent

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


def _copy_hashing(reader: io.BufferedIOBase, fd: int) -> str:
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
