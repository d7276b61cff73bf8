"""The manifests the filter cleaned lately, by the sha256 of the file's bytes.

git cleans a file a second time when the index cannot tell it apart from a
racy change: in ``git commit`` (and ``git status``) right after a ``git add``
of a file written within the same second, as a training loop's ``torch.save``
then ``git add`` and ``git commit`` does at every step. A manifest is a pure
function of the file's bytes (docs/manifest.md), so the filter answers the
second clean from here without loading the format parsers or parsing the
file. A large file is not read ahead: its clean is answered from here only
when its work-tree copy has the stat data it had after its last clean, once
the bytes git sent have been hashed (filter.py keeps a copy to clean from
otherwise). docs/store.md ("Clean cache") specifies the entries and why a
hit gives what a clean would give.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ThetaError
from .manifest import MAX_MANIFEST_BYTES, Manifest, ManifestError
from .version import __version__

if TYPE_CHECKING:
    from .formats.source import Readable
    from .store.local import LocalStore

__all__ = ["CACHED_UP_TO", "CleanCache", "read_up_to", "Prefixed"]

# Files up to this size are read whole before they are cleaned, to be looked up;
# a larger one streams as before (its clean costs far more than the filter's start).
CACHED_UP_TO = 16 << 20
MAX_ENTRIES = 32  # the newest are kept; a loop needs the last one or two
_READ_STEP = 1 << 20


class CleanCache:
    """``<theta dir>/cleaned/<sha256 of the file>``: the entries, newest kept."""

    def __init__(self, theta_dir: Path) -> None:
        self.directory = Path(theta_dir) / "cleaned"
        self._first_line = f"git-theta-cleaned 1 {__version__}\n".encode()
        self._path_first_line = f"git-theta-cleaned-path 1 {__version__}\n".encode()

    def lookup(self, data: bytes | bytearray, store: LocalStore) -> bytes | None:
        """The manifest clean would give for ``data``, or None.

        A hit needs an entry written by this version for the same sha256,
        whose manifest parses and names this size and sha256, and every
        object it names present in ``store`` and decoding to its id (as a
        clean that finds an object stored checks it). Each is then freshened,
        as clean's dedup does.
        """
        return self._lookup(hashlib.sha256(data).hexdigest(), len(data), store, decode=True)

    def lookup_large(self, digest: str, size: int, store: LocalStore) -> bytes | None:
        """The manifest clean would give for the ``size`` bytes of sha256 ``digest``, a
        large file, or None: as :meth:`lookup`, except that each object is checked to be
        present with its delta bases, not decoded (docs/store.md, "Clean cache" rule 4).
        """
        return self._lookup(digest, size, store, decode=False)

    def _lookup(self, digest: str, size: int, store: LocalStore, decode: bool) -> bytes | None:
        entry = self._read(self.directory / digest)
        if entry is None or not entry.startswith(self._first_line):
            return None
        manifest_bytes = entry[len(self._first_line) :]
        try:
            manifest = Manifest.parse(manifest_bytes)
        except ManifestError:
            return None
        if manifest.sha256 != digest or manifest.size != size:
            return None
        oids = sorted(manifest.object_ids())
        try:
            for oid in oids:
                if decode:
                    store.verify(oid)
                else:
                    store.check_readable(oid)
        except (OSError, ThetaError):
            return None  # a clean writes what is missing or damaged again
        for oid in oids:
            store.freshen(oid)
        with contextlib.suppress(OSError):
            os.utime(self.directory / digest)  # the newest entries are kept
        return manifest_bytes

    def remember(self, data: bytes | bytearray, manifest_bytes: bytes) -> None:
        """Keep the manifest just cleaned from ``data`` (not a manifest passed through)."""
        digest = hashlib.sha256(data).hexdigest()
        try:
            manifest = Manifest.parse(manifest_bytes)
        except ManifestError:
            return
        if manifest.sha256 != digest or manifest.size != len(data):
            return
        self._write(digest, self._first_line + manifest_bytes)

    def remember_large(
        self, path: str, manifest_bytes: bytes, worktree: os.stat_result | None
    ) -> None:
        """Keep the manifest just cleaned from a large file (not one passed through),
        under the sha256 and size its clean computed, and, when ``worktree`` (the stat
        data of the work-tree copy of ``path`` after the clean) has that size, that
        the path's next clean will likely be of the same bytes (:meth:`expects_again`)."""
        try:
            manifest = Manifest.parse_head(manifest_bytes)  # its size and sha256 suffice
        except ManifestError:
            return
        self._write(manifest.sha256, self._first_line + manifest_bytes)
        if worktree is not None and worktree.st_size == manifest.size:
            record = f"{_stat_key(worktree)}\n".encode()
            self._write(_path_entry(path), self._path_first_line + record)

    def expects_again(self, path: str, worktree: os.stat_result | None) -> bool:
        """Whether the bytes git sends for ``path`` are likely those cleaned last time:
        its work-tree copy has the stat data it had after that clean. Only a guess (git
        may send other bytes under the path): the caller checks the sha256."""
        if worktree is None:
            return False
        entry = self._read(self.directory / _path_entry(path))
        if entry is None or not entry.startswith(self._path_first_line):
            return False
        lines = entry[len(self._path_first_line) :].decode("ascii", "replace").split("\n")
        return lines[0] == _stat_key(worktree)

    def _write(self, name: str, data: bytes) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            temp = self.directory / f".{name}.{os.getpid()}.tmp"
            temp.write_bytes(data)
            os.replace(temp, self.directory / name)  # a reader sees all of an entry or none
            self._drop_oldest()
        except OSError:
            return  # a cache: an add never fails for it

    def _read(self, path: Path) -> bytes | None:
        limit = len(self._first_line) + MAX_MANIFEST_BYTES
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        with os.fdopen(fd, "rb") as file:
            data = file.read(limit + 1)
        return data if len(data) <= limit else None

    def _drop_oldest(self) -> None:
        entries = []
        for name in os.listdir(self.directory):
            with contextlib.suppress(OSError):
                entries.append((os.stat(self.directory / name).st_mtime_ns, name))
        entries.sort(reverse=True)
        for _mtime, name in entries[MAX_ENTRIES:]:
            with contextlib.suppress(OSError):
                os.unlink(self.directory / name)


def _path_entry(path: str) -> str:
    """The name of the entry that says what ``path`` held at its last large clean."""
    return "path-" + hashlib.sha256(os.fsencode(path)).hexdigest()


def _stat_key(worktree: os.stat_result) -> str:
    # Every field a rewrite changes; ctime can be set by no one but the kernel.
    return " ".join(
        str(value)
        for value in (
            worktree.st_size,
            worktree.st_mtime_ns,
            worktree.st_ctime_ns,
            worktree.st_ino,
            worktree.st_dev,
        )
    )


def read_up_to(content: Readable, limit: int) -> bytearray:
    """Read ``content`` until it ends or ``limit`` bytes have come."""
    data = bytearray()
    step = memoryview(bytearray(min(_READ_STEP, max(limit, 1))))
    while len(data) < limit:
        count = content.readinto(step[: min(len(step), limit - len(data))])
        if not count:
            break
        data += step[:count]
    return data


class Prefixed:
    """A :class:`Readable` of ``head`` followed by the rest of ``rest``."""

    def __init__(self, head: bytes | bytearray, rest: Readable) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readinto(self, buffer: memoryview | bytearray) -> int:
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        return self._rest.readinto(buffer)
