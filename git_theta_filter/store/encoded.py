"""Stored objects: a canonical object's bytes, or its encoded form.

Specified in ``docs/store.md`` ("Encoded objects"). An object's id is always
the sha256 of its canonical single-tensor safetensors file; how those bytes
sit on disk is this module's business. A stored object is a byte region (a
loose file, or an entry of a pack) that holds either

* the canonical object itself, or
* an encoded object: a fixed header, the canonical header verbatim, then the
  payload in blocks of byte planes (``codec.py``), each plane raw,
  zstd-compressed, or XOR'ed against the same block of a *base* object.

:class:`StoredObject` reads either kind by block or by byte range, decoding a
delta's chain as it goes; :class:`ObjectReader` is the file-like view of the
canonical bytes that every reader gets, and verifies the sha256 when it has
read them all. :class:`EncodingWriter` streams a payload into the encoded
form on worker threads, or falls back to the canonical form when the first
block does not compress.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Protocol

from ..threads import LazyThreadPool
from .codec import (
    MODE_SAME,
    MODE_XOR_ZSTD,
    RAW_ABOVE,
    SMALL_RAW_ABOVE,
    WIDTHS,
    BlockFormatError,
    decode_block,
    decode_block_bytes,
    decode_records,
    encode_block,
    join_planes,
    plane_records,
    split_planes,
)
from .integrity import ObjectCorruptError
from .object_format import MAX_OBJECT_HEADER, ObjectFormatError, ObjectHeader, parse_header_bytes

if TYPE_CHECKING:
    from concurrent.futures import Future

    import numpy as np

__all__ = [
    "MAGIC",
    "BLOCK_SIZE",
    "MAX_DEPTH",
    "KIND_FULL",
    "KIND_DELTA",
    "EncodedHeader",
    "DeltaBaseMissingError",
    "BlockRecordsDamagedError",
    "StoredObject",
    "ObjectReader",
    "EncodingWriter",
    "encode_whole",
    "write_digested",
    "SmallObjectOutlook",
    "PACK_BELOW",
    "is_small",
    "is_encoded",
    "width_for",
    "version_for",
    "block_digest",
    "block_hasher",
    "VERSION_PLAIN",
    "VERSION_DIGESTED",
]

# Objects smaller than this (canonical bytes) go into packs and are encoded in memory,
# in one plane. A file may hold thousands, each decoded by a call of its own, so their
# encoding must save more to pay: SMALL_RAW_ABOVE instead of RAW_ABOVE.
PACK_BELOW = 1 << 20
MAGIC = b"\x89thz"
# Version 2 adds a table of two BLAKE3 digests per block: of its payload bytes, and
# of its stored plane records. They let a clean tell that a payload repeats its
# previous version, and that the stored copy still holds it, without decoding that
# version. Written for large objects; a small one stays version 1 (see version_for).
VERSION_PLAIN = 1
VERSION_DIGESTED = 2
DIGEST_SIZE = 32
_TABLE_ENTRY = 2 * DIGEST_SIZE  # the payload's digest, then the records'
KIND_FULL = 1
KIND_DELTA = 2
BLOCK_SIZE = 1 << 20
MIN_BLOCK_SIZE = 4 << 10
MAX_BLOCK_SIZE = 16 << 20
MAX_DEPTH = 255
_FIXED = struct.Struct("<4sBBBBIIQ32s32s")
OID_OFFSET = 24  # where the oid sits in _FIXED
_BLOCK_LENGTH = struct.Struct("<I")
_NO_BASE = bytes(32)
# Floating-point dtypes are split into byte planes; everything else is one plane.
_FLOAT_WIDTHS = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "C64": 4}

# Encoding and read-ahead decoding run here; zstd, hashlib and numpy release
# the GIL on large buffers, so the blocks of one object use every core.
_workers = LazyThreadPool(max(2, min(4, os.cpu_count() or 2)), "theta-codec")
WORKERS = _workers.max_workers


def width_for(dtype: str, nbytes: int) -> int:
    """How many byte planes an object of ``dtype`` is split into (1: not split)."""
    width = _FLOAT_WIDTHS.get(dtype, 1)
    return width if nbytes % width == 0 else 1


def is_encoded(prefix: bytes | bytearray | memoryview) -> bool:
    """Whether stored bytes start like an encoded object (never like a canonical one)."""
    return bytes(prefix[:4]) == MAGIC


class DeltaBaseMissingError(ObjectFormatError):
    """A delta's base object is not in the store, so the delta cannot be decoded."""

    def __init__(self, oid: str, base: str) -> None:
        super().__init__(oid, f"its delta base {base} is missing")
        self.hint = (
            "run `git theta fsck` (it moves the undecodable object aside), then "
            "`git theta fetch` to restore it"
        )
        self.base = base


class BlockRecordsDamagedError(ObjectFormatError):
    """A block's stored plane records no longer hash to the digest recorded when they
    were written (version 2): they decode, if at all, to other bytes than were stored."""

    def __init__(self, oid: str, index: int) -> None:
        super().__init__(oid, f"block {index}'s records do not match their digest")
        self.index = index


def version_for(canonical_size: int) -> int:
    """The encoded format version this encoder writes for an object of ``canonical_size``
    bytes: with block digests when it is large. A small object is compared with its
    previous version by decoding it whole, which costs less than its digest would."""
    return VERSION_PLAIN if is_small(canonical_size) else VERSION_DIGESTED


def block_digest(block: bytes | bytearray | memoryview) -> bytes:
    """The BLAKE3 digest of one block of payload bytes, as a version 2 object records it."""
    import blake3

    return blake3.blake3(block).digest()


def _table_entry(block: bytes | bytearray | memoryview, stored: bytes) -> bytes:
    """A block's entry in a version 2 object's table: the digests of its payload bytes
    and of ``stored``, its plane records."""
    return block_digest(block) + block_digest(stored)


def block_hasher() -> Hasher:
    """A running BLAKE3 hash, for a block that arrives in pieces."""
    import blake3

    return blake3.blake3()


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> object: ...
    def digest(self) -> bytes: ...


@dataclass(frozen=True)
class EncodedHeader:
    """The fixed fields of an encoded object, and the canonical header it carries."""

    kind: int
    width: int
    depth: int
    block_size: int
    canonical_header: bytes
    payload_length: int
    oid: str
    base: str | None
    version: int

    @property
    def has_digests(self) -> bool:
        return self.version == VERSION_DIGESTED

    @property
    def digests_offset(self) -> int:
        """Where the block digests start (version 2): right after the canonical header."""
        return _FIXED.size + len(self.canonical_header)

    @property
    def size(self) -> int:
        """Bytes before the first block: the headers, and the digests in version 2."""
        table = self.block_count * _TABLE_ENTRY if self.has_digests else 0
        return self.digests_offset + table

    @property
    def block_count(self) -> int:
        return -(-self.payload_length // self.block_size)

    def block_span(self, index: int) -> int:
        """Payload bytes in block ``index``."""
        return min(self.block_size, self.payload_length - index * self.block_size)

    def to_bytes(self) -> bytes:
        base = bytes.fromhex(self.base) if self.base else _NO_BASE
        fixed = _FIXED.pack(
            MAGIC,
            self.version,
            self.kind,
            self.width,
            self.depth,
            self.block_size,
            len(self.canonical_header),
            self.payload_length,
            bytes.fromhex(self.oid),
            base,
        )
        # The digests are zero until the encoder has them (EncodingWriter.finish).
        return fixed + self.canonical_header + bytes(self.size - self.digests_offset)

    @classmethod
    def parse(cls, oid: str, data: bytes, region_size: int) -> EncodedHeader:
        """Validate the header at the start of ``data`` (at least its first bytes)."""
        if len(data) < _FIXED.size:
            raise ObjectFormatError(oid, "encoded object shorter than its header")
        (magic, version, kind, width, depth, block_size, header_length, payload_length, raw_oid,
         raw_base) = _FIXED.unpack_from(data)  # fmt: skip
        if magic != MAGIC:
            raise ObjectFormatError(oid, "not an encoded object")
        if version not in (VERSION_PLAIN, VERSION_DIGESTED):
            raise ObjectFormatError(oid, f"encoded object version {version} is not supported")
        if raw_oid.hex() != oid:
            raise ObjectFormatError(oid, f"encoded object names {raw_oid.hex()}")
        if kind not in (KIND_FULL, KIND_DELTA):
            raise ObjectFormatError(oid, f"unknown encoding kind {kind}")
        if (kind == KIND_DELTA) != (raw_base != _NO_BASE) or (kind == KIND_DELTA) != (depth > 0):
            raise ObjectFormatError(oid, "base and depth disagree with the encoding kind")
        if raw_base == raw_oid:
            raise ObjectFormatError(oid, "is its own delta base")
        if width not in WIDTHS:
            raise ObjectFormatError(oid, f"plane width {width} is not 1, 2, 4 or 8")
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or block_size % width:
            raise ObjectFormatError(oid, f"block size {block_size} is out of range")
        if payload_length % width:
            raise ObjectFormatError(oid, f"payload of {payload_length} bytes is not {width}-wide")
        if header_length > 8 + MAX_OBJECT_HEADER or len(data) < _FIXED.size + header_length:
            raise ObjectFormatError(oid, "canonical header runs past the end")
        canonical = bytes(data[_FIXED.size : _FIXED.size + header_length])
        parsed = parse_header_bytes(oid, canonical, header_length + payload_length)
        if parsed.data_offset != header_length:
            raise ObjectFormatError(oid, "canonical header length disagrees with its content")
        header = cls(
            kind,
            width,
            depth,
            block_size,
            canonical,
            payload_length,
            oid,
            raw_base.hex() if kind == KIND_DELTA else None,
            version,
        )
        # Every block costs at least its length field and one plane record.
        if header.size + header.block_count * (_BLOCK_LENGTH.size + 5) > region_size:
            raise ObjectFormatError(oid, "encoded object is shorter than its blocks")
        # Reading the last block checks that nothing follows it; with no block, here.
        if not header.block_count and header.size != region_size:
            raise ObjectFormatError(oid, "bytes after the last block")
        return header


# An object's headers are read with this many bytes first. Ours take a few hundred;
# reading up to the header limit read most of every small object twice (once to
# open it, once to decode it).
_FIRST_READ = 512


def _header_bytes_needed(prefix: bytes) -> int:
    """How many bytes from the start hold the headers (and, in version 1, block 0's
    length field: in version 2 the digests come first), as far as ``prefix`` tells;
    the parsers check them."""
    if is_encoded(prefix) and len(prefix) >= _FIXED.size:
        fields = _FIXED.unpack_from(prefix)
        version, canonical_header_length = fields[1], fields[6]
        first_length = _BLOCK_LENGTH.size if version == VERSION_PLAIN else 0
        return _FIXED.size + canonical_header_length + first_length
    if not is_encoded(prefix) and len(prefix) >= 8:
        (json_length,) = struct.unpack_from("<Q", prefix)
        return 8 + json_length
    return len(prefix)


# Opens a delta's base by oid; None when the store does not have it.
OpenBase = Callable[[str], "StoredObject | None"]


class StoredObject:
    """One stored object: ``length`` bytes at ``start`` of an open file, canonical or encoded.

    Reads use ``os.pread``, so one instance serves several threads. A delta's
    base is opened through ``open_base`` the first time a block needs it;
    its depth must be below this object's, so every chain ends.
    """

    def __init__(
        self,
        oid: str,
        fd: int,
        start: int,
        length: int,
        open_base: OpenBase | None = None,
        owns_fd: bool = False,
    ) -> None:
        self.oid = oid
        self._fd = fd
        self._owns_fd = owns_fd
        self._base: StoredObject | None = None
        self._lock = threading.Lock()
        self._start = start
        self._length = length
        self._open_base = open_base
        try:
            self._read_headers()
        except BaseException:
            self.close()
            raise

    def _read_headers(self) -> None:
        length = self._length
        oid = self.oid
        limit = min(length, _FIXED.size + 8 + MAX_OBJECT_HEADER)
        prefix = self._pread(0, min(limit, _FIRST_READ))
        if len(prefix) < limit and (needed := _header_bytes_needed(prefix)) > len(prefix):
            prefix = self._pread(0, min(limit, needed))
        self.encoded: EncodedHeader | None = None
        self._first_block_length: bytes | None = None
        self._digests: bytes | None = None  # version 2: read on first use
        if is_encoded(prefix):
            self.encoded = EncodedHeader.parse(oid, prefix, length)
            # Block 0's length field, when it came with the headers: not read again.
            field = prefix[self.encoded.size : self.encoded.size + _BLOCK_LENGTH.size]
            if len(field) == _BLOCK_LENGTH.size:
                self._first_block_length = field
            self.header = parse_header_bytes(
                oid,
                self.encoded.canonical_header,
                len(self.encoded.canonical_header) + self.encoded.payload_length,
            )
            self.canonical_header = self.encoded.canonical_header
            self.depth = self.encoded.depth
            self._block_offsets = [self.encoded.size]
        else:
            self.header = parse_header_bytes(oid, prefix, length)
            self.canonical_header = bytes(prefix[: self.header.data_offset])
            self.depth = 0

    @property
    def size(self) -> int:
        """Bytes the object takes in storage."""
        return self._length

    @property
    def base_oid(self) -> str | None:
        return self.encoded.base if self.encoded else None

    def read_stored(self) -> bytes:
        """The stored bytes as they are (encoded or canonical), for copying into a pack."""
        return self._pread(0, self._length)

    @property
    def region(self) -> tuple[int, int, int]:
        """(file descriptor, offset, length) of the stored bytes: readers of many small
        pack entries read neighbouring ones together (:meth:`payload_from_stored`)."""
        return self._fd, self._start, self._length

    @property
    def whole_in_one_read(self) -> bool:
        """Whether :meth:`payload_from_stored` decodes this object: canonical, or encoded
        in one block against no base."""
        encoded = self.encoded
        return encoded is None or (encoded.block_count == 1 and encoded.base is None)

    def payload_from_stored(self, stored: bytes | memoryview) -> bytes | bytearray | memoryview:
        """The whole payload, decoded from ``stored``, this object's stored bytes as read
        from :attr:`region`, with the checks a read by block makes (the block's length
        field, nothing after the last block, the plane records and zstd frames); only
        for an object that is :attr:`whole_in_one_read`. Not verified: for a caller that
        hashes every byte itself (smudge).
        """
        if len(stored) != self._length:
            raise ObjectFormatError(self.oid, "stored object ends early")
        view = memoryview(stored)
        encoded = self.encoded
        if encoded is None:
            return view[self.header.data_offset :]
        if not self.whole_in_one_read:
            raise ValueError("payload_from_stored() decodes one block against no base")
        start = encoded.size
        (length,) = _BLOCK_LENGTH.unpack_from(view, start)
        end = start + _BLOCK_LENGTH.size + length
        if end > self._length:
            raise ObjectFormatError(self.oid, "block 0 runs past the end")
        if end != self._length:
            raise ObjectFormatError(self.oid, "bytes after the last block")
        try:
            return decode_block_bytes(
                view[start + _BLOCK_LENGTH.size : end], encoded.width, encoded.block_span(0)
            )
        except BlockFormatError as exc:
            raise ObjectFormatError(self.oid, f"block 0: {exc}") from None

    def _pread(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fd, size, self._start + offset)
        if len(data) != size:
            raise ObjectFormatError(self.oid, "stored object ends early")
        return data

    # -- blocks ----------------------------------------------------------------
    def _block_records(self, index: int, checked: bool = False) -> bytes:
        """The stored plane records of block ``index``, in one read; ``checked``: first
        hashed against the digest a version 2 object records of them."""
        start, length = self._block_extent(index)
        records = self._pread(start, length)
        if checked:
            entry = index * _TABLE_ENTRY + DIGEST_SIZE
            if block_digest(records) != self._digest_table()[entry : entry + DIGEST_SIZE]:
                raise BlockRecordsDamagedError(self.oid, index)
        return records

    def _block_extent(self, index: int) -> tuple[int, int]:
        """Where block ``index``'s plane records start, and their length, found by walking
        the block lengths."""
        assert self.encoded is not None
        last = self.encoded.block_count - 1
        with self._lock:
            offsets = self._block_offsets
            while len(offsets) <= index + 1:
                block = len(offsets) - 1
                field = self._first_block_length if block == 0 else None
                (length,) = _BLOCK_LENGTH.unpack(
                    field or self._pread(offsets[-1], _BLOCK_LENGTH.size)
                )
                end = offsets[-1] + _BLOCK_LENGTH.size + length
                if end > self._length:
                    raise ObjectFormatError(self.oid, f"block {block} runs past the end")
                if block == last and end != self._length:
                    raise ObjectFormatError(self.oid, "bytes after the last block")
                offsets.append(end)
            start, end = offsets[index], offsets[index + 1]
        return start + _BLOCK_LENGTH.size, end - start - _BLOCK_LENGTH.size

    def _digest_table(self) -> bytes:
        """A version 2 object's table of digests, read once."""
        encoded = self.encoded
        assert encoded is not None and encoded.has_digests
        with self._lock:
            if self._digests is None:
                self._digests = self._pread(
                    encoded.digests_offset, encoded.block_count * _TABLE_ENTRY
                )
            return self._digests

    def payload_digest(self, index: int) -> bytes:
        """The digest a version 2 object records of block ``index``'s payload bytes."""
        start = index * _TABLE_ENTRY
        return self._digest_table()[start : start + DIGEST_SIZE]

    def digested_chain(self) -> bool:
        """Whether this object and every object down its chain are encoded objects of
        version 2 in the same blocks and planes: then :meth:`payload_digest` and
        :meth:`records_intact` tell what a block decodes to without decoding it. A
        base that cannot be opened makes it False; decoding names the error."""
        member = self
        geometry = None
        while True:
            encoded = member.encoded
            if encoded is None or not encoded.has_digests:
                return False
            if geometry is not None and (encoded.width, encoded.block_size) != geometry:
                return False
            geometry = (encoded.width, encoded.block_size)
            if encoded.base is None:
                return True
            try:
                member = member.base()
            except (OSError, ObjectFormatError):
                return False

    def records_intact(self, index: int, down_chain: bool = True) -> bool:
        """Whether block ``index``'s stored plane records hash to the digest recorded
        when they were written, and, ``down_chain``, so do those of the blocks down the
        chain that its planes are decoded from: then the block still decodes to the
        payload it was written from. Down the chain, only for a :meth:`digested_chain`."""
        encoded = self.encoded
        assert encoded is not None and encoded.has_digests
        try:
            records = self._block_records(index, checked=True)
        except BlockRecordsDamagedError:
            return False
        if encoded.base is None or not down_chain:
            return True
        plane_size = encoded.block_span(index) // encoded.width
        try:
            modes = plane_records(
                lambda offset, size: records[offset : offset + size],
                len(records),
                encoded.width,
                plane_size,
                wanted=(),
            )
        except BlockFormatError:
            return False
        if not any(mode in (MODE_XOR_ZSTD, MODE_SAME) for mode, _ in modes):
            return True
        return self.base().records_intact(index)

    def base(self) -> StoredObject:
        """The delta's base, opened and checked the first time a block needs it."""
        assert self.encoded is not None and self.encoded.base is not None
        with self._lock:
            if self._base is None:
                self._base = self._checked_base(self.encoded.base)
            return self._base

    def _checked_base(self, base_oid: str) -> StoredObject:
        base = self._open_base(base_oid) if self._open_base else None
        if base is None:
            raise DeltaBaseMissingError(self.oid, base_oid)
        if base.depth >= self.depth:
            base.close()
            raise ObjectFormatError(
                self.oid, f"base {base.oid} has depth {base.depth}, not below {self.depth}"
            )
        if base.header.nbytes != self.header.nbytes:
            base.close()
            raise ObjectFormatError(self.oid, f"base {base.oid} has another payload length")
        return base

    def down_chain_to(self, depth: int) -> StoredObject:
        """The first object of this one's chain (itself, its base, its base's base, ...)
        whose depth is at most ``depth``. Bases are opened as for reading, and closed
        with this object."""
        member = self
        while member.depth > depth:
            member = member.base()
        return member

    def loose_canonical_fd(self) -> int | None:
        """For a canonical object that owns its whole file: hand that file over
        (this object is closed), so it is read directly. Otherwise None.
        """
        if self.encoded is not None or not self._owns_fd or self._start:
            return None
        fd, self._fd = self._fd, -1
        return fd

    def __enter__(self) -> StoredObject:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def owns_file(self) -> bool:
        """Whether this object holds a file descriptor of its own (a loose object does)."""
        return self._owns_fd

    def drop_bases(self) -> None:
        """Close the bases opened so far; a block that needs one opens it again."""
        with self._lock:
            base, self._base = self._base, None
        if base is not None:
            base.close()

    def close(self) -> None:
        """Close the file if this object owns it, and the bases it opened. An object that
        does not own its file (a pack entry) can still be read afterwards."""
        self.drop_bases()
        if self._owns_fd and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def planes(
        self,
        index: int,
        width: int,
        block_size: int,
        wanted: frozenset[int] | None = None,
        checked: bool = False,
    ) -> np.ndarray:
        """The payload block ``index`` of ``block_size`` bytes, split into ``width`` planes;
        only the rows in ``wanted`` (default: all) are sure to be filled.

        ``checked`` (a :meth:`digested_chain` only): the block's records, and those down
        the chain that its planes are decoded from, are read whole and hashed against
        their recorded digests first; :class:`BlockRecordsDamagedError` if any fails.
        """
        encoded = self.encoded
        if encoded is not None and (encoded.width, encoded.block_size) == (width, block_size):
            if not 0 <= index < encoded.block_count:
                raise ObjectFormatError(self.oid, f"no block {index}")
            try:
                plane_size = encoded.block_span(index) // width
                if checked:
                    stored = memoryview(self._block_records(index, checked=True))
                    records = plane_records(
                        lambda offset, size: stored[offset : offset + size],
                        len(stored),
                        width,
                        plane_size,
                        wanted,
                    )
                else:
                    # Only the wanted planes' bytes are read: down a chain of deltas, the
                    # planes every version stores raw (the low bytes of floats) are not
                    # read at all.
                    start, length = self._block_extent(index)
                    records = plane_records(
                        lambda offset, size: self._pread(start + offset, size),
                        length,
                        width,
                        plane_size,
                        wanted,
                    )
                return decode_records(
                    records,
                    plane_size,
                    lambda needed: self.base().planes(index, width, block_size, needed, checked),
                    wanted,
                )
            except BlockFormatError as exc:
                raise ObjectFormatError(self.oid, f"block {index}: {exc}") from None
        start = index * block_size
        span = min(block_size, self.header.nbytes - start)
        return split_planes(self.read_payload(start, span), width)

    def read_payload(self, offset: int, size: int) -> bytes:
        """Payload bytes ``[offset, offset + size)``, decoded."""
        if offset < 0 or size < 0 or offset + size > self.header.nbytes:
            raise ValueError(f"payload range {offset}+{size} is outside the object")
        if self.encoded is None:
            return self._pread(self.header.data_offset + offset, size)
        encoded = self.encoded
        parts = []
        position = offset
        while position < offset + size:
            index = position // encoded.block_size
            block = self.decoded_block(index)
            begin = position - index * encoded.block_size
            take = min(len(block) - begin, offset + size - position)
            parts.append(bytes(block[begin : begin + take]))
            position += take
        return b"".join(parts)

    def decoded_block(
        self, index: int, out: bytearray | None = None, checked: bool = False
    ) -> bytes | bytearray | memoryview:
        """Payload block ``index`` in this object's own block size; with ``out`` (of the
        block's size), the bytes are in ``out`` (returned) whenever planes are joined.
        ``checked`` (version 2): the block's own records are hashed against their digest
        first (:class:`BlockRecordsDamagedError`); its bases' are not."""
        encoded = self.encoded
        assert encoded is not None
        if not 0 <= index < encoded.block_count:
            raise ObjectFormatError(self.oid, f"no block {index}")
        try:
            return decode_block_bytes(
                self._block_records(index, checked),
                encoded.width,
                encoded.block_span(index),
                partial(self._base_planes, index),
                out,
            )
        except BlockFormatError as exc:
            raise ObjectFormatError(self.oid, f"block {index}: {exc}") from None

    def _base_planes(self, index: int, needed: frozenset[int]) -> np.ndarray:
        assert self.encoded is not None
        return self.base().planes(index, self.encoded.width, self.encoded.block_size, needed)


class ObjectReader(io.RawIOBase):
    """The canonical bytes of a stored object, as a read-only, seekable file.

    Opens positioned at the payload, as a canonical object file would be. If
    every byte is read in order from the start, the sha256 is checked at the
    end: a stored object that decodes to other bytes raises
    :class:`ObjectFormatError` instead of ending quietly. Later blocks are
    decoded on worker threads while the caller consumes earlier ones.
    """

    def __init__(self, stored: StoredObject, verify: bool = True) -> None:
        super().__init__()
        self.stored = stored
        self._size = stored.header.data_offset + stored.header.nbytes
        self._pos = stored.header.data_offset
        self._hash = hashlib.sha256(stored.canonical_header) if verify else None
        self._hashed_to = stored.header.data_offset  # bytes hashed in order so far
        self._block: tuple[int, memoryview] | None = None
        self._ahead: dict[int, Future] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _payload_block(self, index: int) -> memoryview:
        encoded = self.stored.encoded
        assert encoded is not None
        if self._block is not None and self._block[0] == index:
            return self._block[1]
        pending = self._ahead.pop(index, None)
        # The next blocks are handed to the workers first, so that they decode while
        # this thread decodes (or waits for) this one.
        for ahead in range(index + 1, min(index + 1 + WORKERS, encoded.block_count)):
            if ahead not in self._ahead:
                self._ahead[ahead] = _workers.submit(self._decoded_block, ahead)
        for stale in [i for i in self._ahead if i < index]:
            self._ahead.pop(stale).cancel()
        block = memoryview(pending.result() if pending else self._decoded_block(index))
        self._block = (index, block)
        return block

    def _decoded_block(self, index: int) -> bytes | bytearray | memoryview:
        """Block ``index`` decoded, on whichever thread asks. A verifying read checks the
        digests a version 2 object records of each block too, its records' before they
        are decoded and its payload's after: a clean trusts them to tell an unchanged
        payload (docs/store.md, rule 7). Only the object's own records: its bases are
        verified as objects of their own."""
        encoded = self.stored.encoded
        assert encoded is not None
        checked = self._hash is not None and encoded.has_digests
        block = self.stored.decoded_block(index, checked=checked)
        if checked and block_digest(block) != self.stored.payload_digest(index):
            raise ObjectFormatError(self.stored.oid, f"block {index} does not match its digest")
        return block

    def payload_blocks(self) -> Iterator[memoryview]:
        """The whole payload, one decoded block at a time, without copying it out.

        Not verified: for a caller that hashes every byte itself (smudge).
        """
        encoded = self.stored.encoded
        if self._hash is not None or encoded is None:
            raise ValueError("payload_blocks() reads an encoded object opened with verify=False")
        for index in range(encoded.block_count):
            yield self._payload_block(index)

    def _read_range(self, position: int, size: int) -> memoryview:
        header_size = self.stored.header.data_offset
        if position < header_size:
            return memoryview(self.stored.canonical_header)[position : position + size]
        offset = position - header_size
        encoded = self.stored.encoded
        if encoded is None:
            return memoryview(self.stored.read_payload(offset, size))
        index = offset // encoded.block_size
        begin = offset - index * encoded.block_size
        return self._payload_block(index)[begin : begin + size]

    def readinto(self, buffer) -> int:  # type: ignore[override]
        target = memoryview(buffer).cast("B")
        size = min(len(target), self._size - self._pos)
        if size <= 0:
            return 0
        data = self._read_range(self._pos, size)
        target[: len(data)] = data
        if self._pos == self._hashed_to and self._hash is not None:
            self._hash.update(data)
            self._hashed_to += len(data)
            if self._hashed_to == self._size:
                digest, self._hash = self._hash.hexdigest(), None
                if digest != self.stored.oid:
                    raise ObjectCorruptError(self.stored.oid, digest)
        self._pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes, fewer only at the end (a block boundary does not shorten it)."""
        if size is None or size < 0:
            size = self._size - self._pos
        out = bytearray(max(0, min(size, self._size - self._pos)))
        view = memoryview(out)
        filled = 0
        while filled < len(out) and (count := self.readinto(view[filled:])):
            filled += count
        return bytes(out[:filled])

    def readall(self) -> bytes:
        return self.read()

    def close(self) -> None:
        if not self.closed:
            for pending in self._ahead.values():
                pending.cancel()
            self._ahead.clear()
            self.stored.close()
        super().close()


def is_small(canonical_size: int) -> bool:
    """Whether an object is small: packed, one plane, and stored canonical unless its
    encoding saves SMALL_RAW_ABOVE (docs/store.md, rule 4 of "Encoded objects")."""
    return canonical_size < PACK_BELOW


class SmallObjectOutlook:
    """Whether the next small object of a dtype is worth an attempt to compress, from
    how those before it went, in the order one thread stores them.

    The small tensors of one file are mostly alike: 6,000 tensors of random fp32
    each cost a compression attempt that failed, and together those attempts
    held the clean back by a third (docs/store.md, rule 4 of "Encoded objects").
    After :data:`TRIED_UNTIL` failures in a row, only every :data:`TRIED_EVERY`-th
    object of that dtype is tried, until one compresses; the others are stored
    canonical. Storage only: ids, and what a checkout writes, are the same.
    """

    TRIED_UNTIL = 32
    TRIED_EVERY = 32

    def __init__(self) -> None:
        self._failed_in_a_row: dict[str, int] = {}

    def worth_trying(self, dtype: str) -> bool:
        failed = self._failed_in_a_row.get(dtype, 0)
        if failed < self.TRIED_UNTIL or (failed - self.TRIED_UNTIL) % self.TRIED_EVERY == 0:
            return True
        self._failed_in_a_row[dtype] = failed + 1  # skipped: counted as one that failed
        return False

    def tried(self, dtype: str, compressed: bool) -> None:
        self._failed_in_a_row[dtype] = 0 if compressed else self._failed_in_a_row.get(dtype, 0) + 1


def encode_whole(
    oid: str,
    canonical_header: bytes,
    header: ObjectHeader,
    payload: bytes | bytearray,
    outlook: SmallObjectOutlook | None = None,
) -> bytes:
    """The stored bytes of a whole object of at most one block, in one plane: what an
    :class:`EncodingWriter` of width 1 writes for it, byte for byte (the encoded form,
    or the canonical one when the encoding does not pay), in one call. Small objects
    are stored so (docs/store.md, rule 4 of "Encoded objects"). With ``outlook``, the
    canonical form without an attempt when it says the attempt is not worth making.
    """
    if len(payload) != header.nbytes or len(payload) > BLOCK_SIZE:
        raise ValueError(f"a whole object of one block, not {len(payload)} bytes")
    if not payload:
        return canonical_header
    if outlook is not None and not outlook.worth_trying(header.dtype):
        return canonical_header + payload
    small = is_small(len(canonical_header) + len(payload))
    stored = encode_block(payload, 1, small=small)
    raw_above = SMALL_RAW_ABOVE if small else RAW_ABOVE
    compressed = _FIXED.size + _BLOCK_LENGTH.size + len(stored) <= raw_above * len(payload)
    if outlook is not None:
        outlook.tried(header.dtype, compressed)
    if not compressed:
        return canonical_header + payload
    version = version_for(len(canonical_header) + header.nbytes)
    encoded = EncodedHeader(
        KIND_FULL, 1, 0, BLOCK_SIZE, canonical_header, header.nbytes, oid, None, version
    )
    fixed = encoded.to_bytes()
    if encoded.has_digests:
        fixed = fixed[: encoded.digests_offset] + _table_entry(payload, stored)
    return fixed + _BLOCK_LENGTH.pack(len(stored)) + stored


def write_digested(stored: StoredObject, out: io.RawIOBase | io.BufferedIOBase) -> None:
    """Write ``stored``, a version 1 encoded object, to ``out`` as version 2: the same
    blocks, after the table of their digests (docs/store.md, rule 7).

    The payload digests are taken from the blocks as a verifying read decodes them,
    so a copy that decodes to other bytes than its id raises before the table is
    written (:class:`~.integrity.ObjectCorruptError`): digests taken from a damaged
    copy would vouch for its damage. ``stored`` is closed at the end.
    """
    encoded = stored.encoded
    if encoded is None or encoded.has_digests:
        raise ValueError(f"object {stored.oid} is not an encoded object of version 1")
    digested = replace(encoded, version=VERSION_DIGESTED)
    out.write(digested.to_bytes())
    table = []
    with ObjectReader(stored) as reader:  # the sha256 is checked when the last byte is read
        for index in range(digested.block_count):
            block = reader.read(digested.block_span(index))
            records = stored._block_records(index)
            table.append(_table_entry(block, records))
            out.write(_BLOCK_LENGTH.pack(len(records)))
            out.write(records)
    out.seek(digested.digests_offset)
    out.write(b"".join(table))
    out.seek(0, io.SEEK_END)


class EncodingWriter:
    """Streams a payload into an encoded object in ``out``; see :meth:`finish`.

    Blocks are encoded on worker threads, at most a few in flight, so memory
    stays bounded by the block size. When the first block's encoding is larger
    than ``RAW_ABOVE`` of the block (``SMALL_RAW_ABOVE`` for an object under
    ``PACK_BELOW``), the object is written canonical instead: whatever the rest
    holds, it would not pay for decoding.
    """

    def __init__(
        self,
        out: io.RawIOBase | io.BufferedIOBase,
        canonical_header: bytes,
        header: ObjectHeader,
        width: int,
        base: StoredObject | None = None,
        block_size: int = BLOCK_SIZE,
        depth: int | None = None,
    ) -> None:
        """``depth`` is a delta's (default: one more than its base's); it must be above
        the base's and at most :data:`MAX_DEPTH`."""
        if base is None:
            depth = 0
        elif depth is None:
            depth = base.depth + 1
        if base is not None and not base.depth < depth <= MAX_DEPTH:
            raise ValueError(f"a delta of depth {depth} cannot have a base of depth {base.depth}")
        if base is not None and base.header.nbytes != header.nbytes:
            # XOR needs the base's bytes for every block; a reader refuses such a delta too.
            raise ValueError(
                f"base {base.oid} has {base.header.nbytes} payload bytes, not {header.nbytes}"
            )
        self._out = out
        self._base = base
        self._encoded = EncodedHeader(
            KIND_DELTA if base else KIND_FULL,
            width,
            depth,
            block_size,
            canonical_header,
            header.nbytes,
            "0" * 64,
            base.oid if base else None,
            version_for(len(canonical_header) + header.nbytes),
        )
        # A small object is one plane against no base (encoding_width gives it 1).
        self._small = (
            is_small(len(canonical_header) + header.nbytes) and width == 1 and base is None
        )
        self._pending: deque[tuple[bytes | bytearray, Future]] = deque()
        self._digests: list[bytes] = []  # of the blocks emitted, for version 2
        # A base whose records tell whether each block is as written (rule 7): a block
        # of it that is not is left out of this delta's (see _encode).
        self._base_checked = (
            base is not None
            and base.digested_chain()
            and base.encoded is not None
            and (base.encoded.width, base.encoded.block_size) == (width, block_size)
        )
        self._buffer = bytearray()
        self._blocks = 0
        self._canonical: bool | None = None  # decided by the first block
        self._written = 0
        out.write(self._encoded.to_bytes())

    @property
    def canonical(self) -> bool:
        return bool(self._canonical)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        block_size = self._encoded.block_size
        while view:
            if self._canonical:
                while self._pending:  # blocks read before the decision go first
                    self._drain_one()
                self._out.write(view)
                self._written += len(view)
                return
            if not self._buffer and len(view) >= block_size:
                # A whole block in the caller's buffer: one copy, no accumulation.
                self._submit(bytes(view[:block_size]))
                view = view[block_size:]
                continue
            take = min(len(view), block_size - len(self._buffer))
            self._buffer += view[:take]
            view = view[take:]
            if len(self._buffer) == block_size:
                block, self._buffer = self._buffer, bytearray()
                self._submit(block)

    def _submit(self, block: bytes | bytearray, last: bool = False) -> None:
        index = self._blocks
        self._blocks += 1
        if last and not self._pending:
            # The only block left, as for every small object: handing it to a worker
            # and waiting would cost more than the encoding (thousands of objects a file).
            self._emit(block, self._encode(index, block))
            return
        self._pending.append((block, _workers.submit(self._encode, index, block)))
        # Blocks are written in order as their encodings finish; the first decides
        # whether the object is stored canonical, and until then the next blocks
        # are already being encoded (wasted only for an object stored canonical).
        while self._pending and (len(self._pending) > 2 * WORKERS or self._pending[0][1].done()):
            self._drain_one()

    def _encode(self, index: int, block: bytes | bytearray) -> tuple[bytes, bytes]:
        """The block's entry in the table of digests (empty in version 1) and its
        stored form."""
        encoded = self._encoded
        base = None
        if self._base is not None:
            try:
                base = self._base.planes(
                    index, encoded.width, encoded.block_size, checked=self._base_checked
                )
            except BlockRecordsDamagedError:
                # A base block damaged since it was written is not XORed with: the delta
                # would decode right only while the base stayed damaged, and wrong once
                # fsck and fetch restored it. The block is stored from its own bytes.
                base = None
        stored = encode_block(block, encoded.width, base, small=self._small)
        if not encoded.has_digests:
            return b"", stored
        return _table_entry(block, stored), stored

    def _drain_one(self) -> None:
        block, future = self._pending.popleft()
        self._emit(block, future.result())

    def _emit(self, block: bytes | bytearray, encoded_block: tuple[bytes, bytes]) -> None:
        """Write one encoded block, in order; the first decides whether the object is
        stored canonical."""
        digest, stored = encoded_block
        self._digests.append(digest)
        if self._canonical is None:
            # The encoded form also carries the fixed header: for a small object it decides.
            overhead = _FIXED.size + _BLOCK_LENGTH.size
            raw_above = SMALL_RAW_ABOVE if self._small else RAW_ABOVE
            self._canonical = overhead + len(stored) > raw_above * len(block)
            if self._canonical:
                self._out.seek(0)
                self._out.truncate()
                self._out.write(self._encoded.canonical_header)
        if self._canonical:
            self._out.write(block)
        else:
            # Two writes: concatenated, the block would be copied once more.
            self._out.write(_BLOCK_LENGTH.pack(len(stored)))
            self._out.write(stored)
        self._written += len(block)

    def finish(self, oid: str) -> None:
        """Encode the last block and write ``oid`` into the header. ``out`` is left at its end."""
        if self._buffer:
            block, self._buffer = self._buffer, bytearray()
            self._submit(block, last=True)
        while self._pending:
            self._drain_one()
        if self._canonical is None:  # an empty payload: nothing to encode
            self._canonical = True
            self._out.seek(0)
            self._out.truncate()
            self._out.write(self._encoded.canonical_header)
        if self._written != self._encoded.payload_length:
            raise ValueError(
                f"{self._written} payload bytes, expected {self._encoded.payload_length}"
            )
        if not self._canonical:
            self._out.seek(OID_OFFSET)
            self._out.write(bytes.fromhex(oid))
            if self._encoded.has_digests:
                self._out.seek(self._encoded.digests_offset)
                self._out.write(b"".join(self._digests))
            self._out.seek(0, io.SEEK_END)

    def replay(self) -> Iterator[bytes | bytearray | memoryview]:
        """The payload bytes written so far, read back and decoded (an input that ended early)."""
        while self._pending:
            self._drain_one()
        encoded = self._encoded
        if self._canonical:
            self._out.seek(len(encoded.canonical_header))
            left = self._written
            while left:
                chunk = self._out.read(min(left, encoded.block_size))
                if not chunk:
                    raise ValueError("the temp file ends early")
                yield chunk
                left -= len(chunk)
        elif self._canonical is not None:
            self._out.seek(encoded.size)
            base = self._base
            for index in range(self._written // encoded.block_size):
                (length,) = _BLOCK_LENGTH.unpack(self._read_back(_BLOCK_LENGTH.size))
                base_planes = None
                if base is not None:
                    base_planes = partial(base.planes, index, encoded.width, encoded.block_size)
                planes = decode_block(
                    self._read_back(length), encoded.width, encoded.block_span(index), base_planes
                )
                yield join_planes(planes)
        yield self._buffer

    def _read_back(self, size: int) -> bytes:
        data = self._out.read(size)
        if len(data) != size:
            # As in the canonical replay: a cut temp file is named, not left to the block parser.
            raise ValueError("the temp file ends early")
        return data

    def abort(self) -> None:
        for _block, future in self._pending:
            future.cancel()
        self._pending.clear()
