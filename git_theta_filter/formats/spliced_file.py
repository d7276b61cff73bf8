"""A file to be written, described the way a manifest describes one:
skeleton bytes with payloads spliced in.

The merge driver builds merged model files in this form, from objects that
are already in the store, and streams them through clean like any other file.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from ..manifest import Splice
from ..splice import SplicedReader
from ..store.local import COPY_CHUNK, LocalStore
from ..store.object_format import ObjectFormatError

__all__ = ["SplicedFile", "payload_crc32"]


@dataclass
class SplicedFile:
    """``splices`` in file order; every byte they do not cover comes from ``skeleton``, in order."""

    skeleton: bytes
    splices: list[Splice]

    @property
    def size(self) -> int:
        return len(self.skeleton) + sum(splice.length for splice in self.splices)

    def payload_oids(self) -> list[str]:
        return [splice.oid for splice in self.splices]

    def reader(self, store: LocalStore) -> SplicedReader:
        """The file's bytes, read from the skeleton and the store as they are asked for."""
        return SplicedReader(self.skeleton, self.splices, self.size, store)


def payload_crc32(store: LocalStore, oid: str) -> int:
    """The CRC-32 of an object's payload, as a zip entry of it would record it."""
    file, header = store.open_object(oid)
    crc = 0
    with file:
        left = header.nbytes
        while left:
            chunk = file.read(min(left, COPY_CHUNK))
            if not chunk:
                raise ObjectFormatError(oid, "payload ends early")
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
    return crc
