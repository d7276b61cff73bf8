"""Where a store writes an object it downloads: a file that takes no byte past the object's size.

Every store (directory, S3, Git LFS, and any later one) hands a download to
an :class:`ObjectSink`; none writes a file itself. So the size limit holds
for every store, whatever it sends: a store that sends more than the object
has (a lying server, a file that grows, a device that never ends) is cut off
at the first byte past it, and the caller deletes the temp file.

The limit comes from the manifest, not from the store. Remote stores hold
canonical objects (``docs/store.md``): an 8-byte header length *N*, *N* bytes
of header, then the payload, whose length the manifest records. So an object
may be at most 8 + 64 KiB + payload bytes, and once its first 8 bytes are in,
exactly 8 + *N* + payload. The sink also hashes what it takes, in order, so
the caller checks the sha256 without reading the file again.
"""

from __future__ import annotations

import hashlib
import struct
from typing import BinaryIO

from .base import StoreError
from .fileio import write_all
from .object_format import MAX_OBJECT_HEADER

__all__ = ["DownloadTooLargeError", "ObjectSink"]

_LENGTH_PREFIX = 8


class DownloadTooLargeError(StoreError):
    """A store sent more bytes than the object it was asked for can have; cut off."""

    def __init__(self, url: str, oid: str, limit: int) -> None:
        super().__init__(
            url,
            f"the store sent more than the {limit} bytes this object has; cut off, nothing kept",
            oid=oid,
            hint="the store holds something else under this id: delete it there, then "
            "`git theta push --all` from a clone with a good copy",
        )
        self.limit = limit


class ObjectSink:
    """A write-only, forward-only file for one download of ``oid`` from ``url``.

    ``max_size`` is the most bytes it takes. With ``payload`` (the payload length
    the manifest records), it takes a canonical object: at most ``max_size`` bytes
    until the header length is in, then exactly that object's size.
    """

    def __init__(
        self, file: BinaryIO, url: str, oid: str, max_size: int, *, payload: int | None = None
    ) -> None:
        self._file = file
        self.url = url
        self.oid = oid
        self._max_size = max_size
        self._payload = payload
        self.restart()

    @classmethod
    def for_object(cls, file: BinaryIO, url: str, oid: str, payload: int) -> ObjectSink:
        """A sink for the canonical object ``oid`` whose manifest gives it ``payload`` bytes."""
        return cls(file, url, oid, _LENGTH_PREFIX + MAX_OBJECT_HEADER + payload, payload=payload)

    def restart(self) -> None:
        """Forget what was written: a store that tries again from the first byte calls this."""
        self._file.seek(0)
        self._file.truncate()
        self.limit = self._max_size
        self.received = 0
        self._prefix = b""
        self._digest = hashlib.sha256()

    def narrow(self, limit: int) -> None:
        """Take at most ``limit`` bytes from now on (a size the store itself announced)."""
        self.limit = min(self.limit, limit)

    # The file-like interface the stores' libraries write through (s3transfer
    # writes to any object with write(); not seekable, so it writes in order).
    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Take ``data``; raise :class:`DownloadTooLargeError` instead if it passes the limit."""
        view = memoryview(data).cast("B")
        if self._payload is not None and len(self._prefix) < _LENGTH_PREFIX:
            self._prefix += bytes(view[: _LENGTH_PREFIX - len(self._prefix)])
            if len(self._prefix) == _LENGTH_PREFIX:
                (header_length,) = struct.unpack("<Q", self._prefix)
                self.limit = min(self.limit, _LENGTH_PREFIX + header_length + self._payload)
        if self.received + len(view) > self.limit:
            raise DownloadTooLargeError(self.url, self.oid, self.limit)
        write_all(self._file, view)
        self._digest.update(view)
        self.received += len(view)
        return len(view)

    def hexdigest(self) -> str:
        """The sha256 of every byte taken since the last restart."""
        return self._digest.hexdigest()
