"""The manifests the filter cleaned lately, by the sha256 of the file's bytes.

git cleans a file a second time when the index cannot tell it apart from a
racy change: in ``git commit`` (and ``git status``) right after a ``git add``
of a file written within the same second, as a training loop's ``torch.save``
then ``git add`` and ``git commit`` does at every step. A manifest is a pure
function of the file's bytes (docs/manifest.md), so the filter answers the
second clean from here without loading the format parsers or parsing the
file. docs/store.md ("Clean cache") specifies the entries and why a hit
gives what a clean would give.
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

    def lookup(self, data: bytes | bytearray, store: LocalStore) -> bytes | None:
        """The manifest clean would give for ``data``, or None.

        A hit needs an entry written by this version for the same sha256,
        whose manifest parses and names this size and sha256, and every
        object it names present in ``store`` and decoding to its id (as a
        clean that finds an object stored checks it). Each is then freshened,
        as clean's dedup does.
        """
        digest = hashlib.sha256(data).hexdigest()
        entry = self._read(self.directory / digest)
        if entry is None or not entry.startswith(self._first_line):
            return None
        manifest_bytes = entry[len(self._first_line) :]
        try:
            manifest = Manifest.parse(manifest_bytes)
        except ManifestError:
            return None
        if manifest.sha256 != digest or manifest.size != len(data):
            return None
        oids = sorted(manifest.object_ids())
        try:
            for oid in oids:
                store.verify(oid)
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
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            temp = self.directory / f".{digest}.{os.getpid()}.tmp"
            temp.write_bytes(self._first_line + manifest_bytes)
            os.replace(temp, self.directory / digest)  # a reader sees all of an entry or none
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

    def readinto(self, buffer: memoryview) -> int:
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        return self._rest.readinto(buffer)
