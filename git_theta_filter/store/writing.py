"""Writing objects into the local store: hashed as they stream, stored encoded.

An object's id is the sha256 of its canonical bytes, computed on a second
thread while the payload is written. How it is stored (``docs/store.md``):

* small objects (canonical size under :data:`PACK_BELOW`) are collected in
  memory and, inside :meth:`LocalStore.packing`, appended to one pack per
  clean; outside it they become loose files;
* larger ones stream into a temp file through :class:`EncodingWriter`, whose
  worker threads encode blocks while this thread reads the next ones;
* either way, an object that is already stored is not written again.

When the store expects an object with the same header (the previous version
of the same tensor, see :meth:`LocalStore.expecting`), the payload is first
compared with it: while they agree nothing is hashed or written. An expected
object that records its blocks' digests (version 2) is compared by hashing the
payload's blocks, which costs a fifth of decoding the object; any other is
decoded and compared byte for byte. At the first difference, the new object
becomes a delta one deeper than the expected object (or a full object, past
the depth limit), written against the object of its chain that
:func:`delta_base_depth` names, and the agreeing prefix is replayed from the
expected object into the encoder.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ThetaError
from ..threads import LazyThreadPool
from . import fileio
from .encoded import (
    OID_OFFSET,
    PACK_BELOW,
    WORKERS,
    EncodingWriter,
    ObjectReader,
    StoredObject,
    _workers,
    block_digest,
    block_hasher,
    is_small,
    width_for,
)
from .integrity import ObjectCorruptError
from .object_format import ObjectFormatError, ObjectHeader, encode_header

if TYPE_CHECKING:
    from concurrent.futures import Future

    from .local import LocalStore

__all__ = [
    "ObjectWriter",
    "UnsizedObjectWriter",
    "ExpectedObject",
    "Difference",
    "UnbufferedOutput",
    "encoding_width",
    "PACK_BELOW",
    "COPY_CHUNK",
    "object_header_for",
]

COPY_CHUNK = 1 << 20

# The object's sha256 runs on this thread while the caller's thread hands the
# same bytes to the encoder; both release the GIL on large buffers.
_object_hasher = LazyThreadPool(1, "theta-object-hash")
# Below this, handing a buffer to the thread costs more than it saves.
_HASH_IN_PARALLEL_FROM = 1 << 16
# A large object's comparisons with its expected version run on the codec's workers,
# at most this many ahead of the one whose result is taken.
_compare_pool = _workers
_COMPARED_AHEAD = WORKERS
# Comparisons by digest run here, one after another: a block's digest takes its
# pieces in order, and one core hashes several GB/s.
_digest_thread = LazyThreadPool(1, "theta-compare-digest")


# Headers are immutable: the thousands of small tensors of a clean share the few they have.
_object_header = functools.lru_cache(maxsize=1024)(ObjectHeader)


def object_header_for(
    dtype: str, shape: tuple[int, ...], canonical_header: bytes, nbytes: int
) -> ObjectHeader:
    """The :class:`ObjectHeader` of an object whose canonical header is ``canonical_header``."""
    return _object_header(dtype, tuple(shape), len(canonical_header), nbytes)


def delta_base_depth(depth: int) -> int:
    """The depth of the base that a new delta of ``depth`` is written against: ``depth``
    with its lowest set bit cleared (skip deltas, docs/store.md).

    Versions follow each other at depths 1, 2, 3, ... after a full object, and
    each one's base is on its predecessor's chain. Reading the delta at depth
    ``d`` then decodes one object per set bit of ``d`` plus the full one (at
    most 4 up to depth 14) instead of ``d + 1``. The price is space: half the
    deltas span 2 or more versions, which changed more bits than one step.
    """
    return depth & (depth - 1)


class UnbufferedOutput(io.RawIOBase):
    """The temp file as the encoder's output: every write goes all the way down."""

    def __init__(self, file: io.FileIO) -> None:
        super().__init__()
        self._file = file

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        fileio.write_all(self._file, data)
        return len(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        return self._file.readinto(buffer)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        return self._file.truncate(size)


@dataclass(frozen=True)
class Difference:
    """A comparison's finding: the payload differs from the expected object at or after
    ``offset``, and ``data`` (a copy) is what arrived from ``offset`` to the end of the
    bytes compared."""

    offset: int
    data: bytes | bytearray


class ExpectedObject:
    """An existing object being compared, chunk by chunk, with a payload that streams in:
    by its blocks' digests when it and its chain record them (docs/store.md, "Encoded
    objects", rule 7), else by decoding it."""

    def __init__(self, stored: StoredObject) -> None:
        self.stored = stored
        self.oid = stored.oid
        # The canonical bytes, decoded on worker threads as the comparison goes.
        self._reader = ObjectReader(stored, verify=False)
        self._owner = True  # closing the reader closes ``stored``
        self._buffer = bytearray()
        self._blocks: dict[int, Future] | None = None  # decoded blocks, for compare_async
        self._block_size = COPY_CHUNK
        # The work still queued or running on the workers, which reads ``stored``.
        self._on_workers: list[Future] = []
        self._by_digest = stored.digested_chain()
        if self._by_digest:
            assert stored.encoded is not None
            self._block_size = stored.encoded.block_size  # a digest's unit
        # Only the digest thread touches these: the block being hashed, the bytes of it
        # that arrived so far (the caller reuses its buffers once a comparison is done),
        # and whether a difference was found.
        self._hasher = block_hasher() if self._by_digest else None
        self._kept = bytearray()
        self._kept_from = 0  # the payload offset of the first byte kept
        self._differed = False
        # Whether each block's stored records are intact, checked on the workers ahead
        # of the payload (the check reads the store only), by block index.
        self._intact: dict[int, Future] = {}

    def matches(self, data: bytes | bytearray | memoryview) -> bool:
        incoming = memoryview(data).cast("B")
        if len(self._buffer) < len(incoming):
            self._buffer = bytearray(len(incoming))
        view = memoryview(self._buffer)[: len(incoming)]
        filled = 0
        while filled < len(view) and (count := self._reader.readinto(view[filled:])):
            filled += count
        # The count check keeps stale bytes of the reused buffer out of the
        # comparison; startswith() compares with memcmp, where memoryview's
        # == would go byte by byte, thirty times slower.
        return filled == len(incoming) and self._buffer.startswith(incoming)

    def compare_async(self, offset: int, data: memoryview, ahead: bool = True) -> Future:
        """Compare ``data`` with the payload bytes from ``offset``, the bytes that follow
        those of the previous call, off this thread. The future's result is None if no
        difference was found, else a :class:`Difference`: either way, ``data`` is not
        read once it is done.

        With digests, the comparison takes place when a block's last byte has come:
        until then a result of None only means "none yet", and the block's bytes are
        kept. Without, the blocks it needs are decoded on the workers, each once
        however many comparisons need it, and with ``ahead`` the next block is
        decoded ahead. Decodes are queued before the comparisons that wait for them,
        so a worker waits only for work already running or done.
        """
        if self._by_digest:
            return _digest_thread.submit(self._compare_digests, offset, data)
        decoded = self._decoded_blocks()
        size = self._block_size
        first = offset // size
        last = max(first, (offset + len(data) - 1) // size)
        for stale in [index for index in decoded if index < first]:
            del decoded[stale]  # a comparison still running holds its own reference
        blocks = [(index, self._block(index)) for index in range(first, last + 1)]
        if ahead and (last + 1) * size < self.stored.header.nbytes:
            self._block(last + 1)
        return _compare_pool.submit(self._compare, offset, data, blocks)

    def _decoded_blocks(self) -> dict[int, Future]:
        """The decodes of the blocks still needed, by index; made on first use."""
        if self._blocks is None:
            encoded = self.stored.encoded
            self._block_size = encoded.block_size if encoded is not None else COPY_CHUNK
            self._blocks = {}
        return self._blocks

    def prepare(self) -> None:
        """Start the work that its first comparison will wait for on a worker: decoding
        its first block, or, by digest, checking that block's stored records."""
        if self._by_digest:
            self._check_records(0)
        else:
            self._block(0)

    def _check_records(self, index: int) -> Future | None:
        """The check of block ``index``'s records (:meth:`StoredObject.records_intact`),
        started on a worker if it was not; None past the last block."""
        future = self._intact.get(index)
        if future is None and index * self._block_size < self.stored.header.nbytes:
            future = self._intact[index] = _compare_pool.submit(self.stored.records_intact, index)
            self._keep_track(future)
        return future

    def compare_rest(self) -> Future:
        """After the last :meth:`compare_async` of a payload that ended early: the
        comparison of the bytes kept of its last block, which no digest can tell."""
        return _digest_thread.submit(self._compare_kept)

    def _compare_digests(self, offset: int, data: memoryview) -> Difference | None:
        if self._differed:
            return Difference(offset, bytes(data))  # the writer takes every byte now
        assert self._hasher is not None
        block_size = self._block_size
        nbytes = self.stored.header.nbytes
        if offset + len(data) > nbytes:
            # More bytes than the object holds: no block of it can tell them, and the
            # writer refuses the payload's length when it is committed.
            start = self._kept_from if self._kept else offset
            return self._differs(start, bytes(self._kept) + bytes(data))
        position, view = offset, data
        while view:
            index, begin = divmod(position, block_size)
            span = min(block_size, nbytes - index * block_size)
            self._check_records(index + 1)  # ahead, while this block's bytes come
            piece, view = view[: span - begin], view[span - begin :]
            position += len(piece)
            if begin == 0 and len(piece) == span:  # a whole block at once: nothing to keep
                if not self._holds(index, block_digest(piece)):
                    return self._differs(index * block_size, bytes(piece) + bytes(view))
                continue
            self._hasher.update(piece)
            self._kept += piece
            self._kept_from = index * block_size
            if begin + len(piece) == span:  # the block's last piece
                same = self._holds(index, self._hasher.digest())
                kept, self._kept, self._hasher = self._kept, bytearray(), block_hasher()
                if not same:
                    kept += view
                    return self._differs(index * block_size, kept)
        return None

    def _holds(self, index: int, digest: bytes) -> bool:
        """Whether block ``index`` of the expected object decodes to the payload bytes of
        this digest: the digest it records, and its stored records as written. A copy
        damaged since is so a difference: the payload is stored again, and replaces it."""
        intact = self._check_records(index)
        assert intact is not None
        self._intact.pop(index - 1, None)
        return digest == self.stored.payload_digest(index) and bool(intact.result())

    def _compare_kept(self) -> Difference | None:
        if self._differed or not self._kept:
            return None
        start = self._kept_from
        if self.stored.read_payload(start, len(self._kept)) == self._kept:
            return None
        return self._differs(start, bytes(self._kept))

    def _differs(self, offset: int, data: bytes | bytearray) -> Difference:
        self._differed = True
        return Difference(offset, data)

    def _block(self, index: int) -> Future:
        decoded = self._decoded_blocks()
        future = decoded.get(index)
        if future is None:
            future = decoded[index] = _compare_pool.submit(self._decode, index)
            self._keep_track(future)
        return future

    def _decode(self, index: int) -> bytes | bytearray:
        start = index * self._block_size
        size = min(self._block_size, self.stored.header.nbytes - start)
        if self.stored.encoded is None:
            return self.stored.read_payload(start, size)
        # Into a bytearray, whose startswith() compares with memcmp.
        block = self.stored.decoded_block(index, out=bytearray(size))
        return block if isinstance(block, (bytes, bytearray)) else bytes(block)

    def _compare(
        self, offset: int, data: memoryview, blocks: list[tuple[int, Future]]
    ) -> Difference | None:
        position = 0
        for index, decoded in blocks:
            block = decoded.result()
            begin = offset + position - index * self._block_size
            take = min(len(block) - begin, len(data) - position)
            if take <= 0 or not block.startswith(data[position : position + take], begin):
                return Difference(offset, bytes(data))
            position += take
        return None if position == len(data) else Difference(offset, bytes(data))

    def iter_prefix(self, size: int) -> Iterator[memoryview]:
        """The first ``size`` payload bytes, in chunks of one reused buffer."""
        return self.iter_range(0, size)

    def iter_range(self, offset: int, size: int) -> Iterator[memoryview]:
        """Payload bytes ``[offset, offset + size)``, in chunks of one reused buffer."""
        self._reader.seek(self.stored.header.data_offset + offset)
        buffer = memoryview(bytearray(min(size, COPY_CHUNK) or 1))
        left = size
        while left:
            count = self._reader.readinto(buffer[: min(left, len(buffer))])
            if not count:
                raise ObjectFormatError(self.oid, "payload ends early")
            yield buffer[:count]
            left -= count

    def _keep_track(self, future: Future) -> None:
        """Hold ``future`` for close(), and drop those done: a done decode would keep
        its block."""
        self._on_workers = [running for running in self._on_workers if not running.done()]
        self._on_workers.append(future)

    def close(self) -> None:
        # The workers read the stored object: let them finish before its file is closed.
        for future in self._on_workers:
            if not future.cancel():
                with contextlib.suppress(Exception):
                    future.result()
        self._on_workers.clear()
        self._reader.close()


def encoding_width(dtype: str, nbytes: int, header_size: int) -> int:
    """The byte planes an object is stored in.

    Small objects are plain zstd (one plane), without deltas: that needs no
    numpy, and most bytes of a model are in its large tensors anyway.
    """
    return 1 if is_small(header_size + nbytes) else width_for(dtype, nbytes)


class ObjectWriter:
    """Streams one object with a known payload size into the store."""

    def __init__(
        self,
        store: LocalStore,
        dtype: str,
        shape: tuple[int, ...],
        nbytes: int,
        names: Sequence[str] = (),
    ) -> None:
        self._store = store
        self._expected = nbytes
        self._written = 0
        self._header = encode_header(dtype, shape, nbytes)
        self._object_header = object_header_for(dtype, shape, self._header, nbytes)
        self._small = is_small(len(self._header) + nbytes)
        self._width = encoding_width(dtype, nbytes, len(self._header))
        self._hash = hashlib.sha256(self._header)
        self._hashing: Future | None = None  # the last hash update queued on the thread
        # (payload offset, length, future) of the comparisons not yet taken, in order
        self._comparing: deque[tuple[int, int, Future]] = deque()
        self._agreed = False  # whether a comparison found its bytes equal
        self._same = store._take_expected(self._header, names)
        # The expected object after a difference, kept open: the delta base is on its chain.
        self._compared: ExpectedObject | None = None
        self._delta_base: StoredObject | None = None
        self._memory: bytearray | None = None  # a small object's payload
        self._file: io.FileIO | None = None  # a large object's temp file
        self._encoder: EncodingWriter | None = None
        self.oid: str | None = None
        if self._same is None:
            self._start(None)

    def _start(self, base: StoredObject | None, depth: int | None = None) -> None:
        if self._small:
            self._memory = bytearray()
            return
        self._file, self._tmp_path = self._store._open_temp()
        try:
            if self._store.compression:
                self._encoder = EncodingWriter(
                    UnbufferedOutput(self._file),
                    self._header,
                    self._object_header,
                    self._width,
                    base,
                    depth=depth,
                )
            else:
                fileio.write_all(self._file, self._header)
        except BaseException:
            self.abort()
            raise

    def _store_bytes(self, data: bytes | bytearray | memoryview) -> None:
        if self._memory is not None:
            self._memory += memoryview(data).cast("B")
        elif self._encoder is not None:
            self._encoder.write(data)
        else:
            assert self._file is not None
            fileio.write_all(self._file, data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hash and store ``data``; the caller may reuse its buffer when this returns."""
        queued = self.write_async(data)
        if queued is not None:
            queued.result()

    def write_async(self, data: bytes | bytearray | memoryview) -> Future | None:
        """Hash and store ``data``, returning the future of the work still reading it, if
        any: the caller keeps ``data`` unchanged until that is done.

        The hash runs on its own thread while this one stores the bytes and goes on to
        read the next ones; :meth:`commit` waits for it.
        """
        if self._same is not None:
            if not self._small:
                return self._compare_async(memoryview(data).cast("B"))
            if self._same.matches(data):
                self._written += len(data)
                return None
            self._diverge(self._written)
        queued = None
        if len(data) < _HASH_IN_PARALLEL_FROM and self._hashing is None:
            self._hash.update(data)
        else:
            # Queued behind this object's earlier updates: one thread runs them in order.
            queued = self._hashing = _object_hasher.submit(self._hash.update, data)
        try:
            self._store_bytes(data)
        except BaseException:
            self._wait_for_hash()  # the caller may reuse the buffer once this raises
            raise
        self._written += len(data)
        return queued

    def _wait_for_hash(self) -> None:
        """Wait for the hash updates queued so far (all of them: they run in order)."""
        if self._hashing is not None:
            queued, self._hashing = self._hashing, None
            queued.result()

    def _compare_async(self, data: memoryview) -> Future:
        """A large object's payload is compared on the codec's workers while this thread
        reads on; the results are taken in order, at most :data:`_COMPARED_AHEAD`
        behind, so that a difference costs few decodes and holds few buffers. Until a
        comparison has agreed, each is waited for: a tensor that changed differs in
        its first bytes, and decoding its next blocks would be wasted."""
        assert self._same is not None
        queued = self._same.compare_async(self._written, data, ahead=self._agreed)
        self._comparing.append((self._written, len(data), queued))
        self._written += len(data)
        self._settle_comparisons(_COMPARED_AHEAD if self._agreed else 0)
        return queued

    def _settle_comparisons(self, keep: int) -> None:
        """Take the results of the comparisons queued, all but the last ``keep``: at the
        first that differs, diverge and store the payload from where it differs."""
        while self._same is not None and len(self._comparing) > keep:
            queued = self._comparing[0][2]
            difference = queued.result()
            self._comparing.popleft()
            if difference is None:
                self._agreed = True
                continue
            same = self._same
            self._diverge(difference.offset)
            self._take(difference.data)
            # Every comparison queued since: the bytes that arrived, or, where they
            # agreed, the same bytes from the expected object.
            while self._comparing:
                offset, length, queued = self._comparing.popleft()
                later = queued.result()
                chunks = [later.data] if later is not None else same.iter_range(offset, length)
                for chunk in chunks:
                    self._take(chunk)

    def _take(self, chunk: bytes | bytearray | memoryview) -> None:
        """Hash and store payload bytes after the comparison is over."""
        self._hash.update(chunk)
        self._store_bytes(chunk)

    def _diverge(self, agreed: int) -> None:
        """Stop comparing: the new object becomes a delta one deeper than the expected
        one, against the member of its chain that :func:`delta_base_depth` names (a
        full object past the depth limit), and the first ``agreed`` payload bytes,
        equal in both, are replayed from the expected object.
        """
        assert self._same is not None
        same, self._same = self._same, None
        self._compared = same
        depth = same.stored.depth + 1
        if depth <= self._store.max_delta_depth:  # 0 without compression
            self._delta_base = same.stored.down_chain_to(delta_base_depth(depth))
        self._start(self._delta_base, depth)
        for chunk in same.iter_prefix(agreed):
            self._take(chunk)

    def commit(self) -> str:
        if self._written != self._expected:
            self.abort()
            raise ThetaError(f"object payload was {self._written} bytes, expected {self._expected}")
        try:
            self._settle_comparisons(0)
        except BaseException:
            self.abort()
            raise
        if self._same is not None:
            self.oid = self._same.oid
            self._same.close()
            self._same = None
            self._store.freshen(self.oid)  # a dedup hit: gc's grace period restarts
            return self.oid
        try:
            self._wait_for_hash()
        except BaseException:
            self.abort()
            raise
        oid = self._hash.hexdigest()
        try:
            if self._memory is not None:
                self._store._add_small(oid, self._header, self._object_header, self._memory)
            else:
                if self._encoder is not None:
                    self._encoder.finish(oid)
                assert self._file is not None
                if self._delta_base is not None and self._delta_base.oid == oid:
                    self._drop_self_base(oid)
                self._store._link_temp(self._file, self._tmp_path, oid)
                self._file = None
        finally:
            self.abort()
        self.oid = oid
        return oid

    def _drop_self_base(self, oid: str) -> None:
        """The delta just written has a base that claims this very id: the object
        compared with, whose bytes differed (so it is damaged), or an older version
        the payload went back to. The format refuses an object that is its own base,
        so decode the delta (XOR with the same base bytes gives the new ones back,
        damaged or not) into a full encoding. When linked, it replaces a damaged
        copy, and is dropped beside a good one.
        """
        assert self._file is not None and self._delta_base is not None
        base = self._delta_base
        self._file.close()
        fd = os.open(self._tmp_path, os.O_RDWR)
        # Named by zeros for the moment: the format refuses an object that is its own base.
        os.pwrite(fd, bytes(32), OID_OFFSET)
        size = os.fstat(fd).st_size
        delta = StoredObject("0" * 64, fd, 0, size, lambda _oid: base, owns_fd=True)
        file, tmp_path = self._store._open_temp()
        try:
            encoder = EncodingWriter(
                UnbufferedOutput(file), self._header, self._object_header, self._width
            )
            digest = hashlib.sha256(self._header)
            with ObjectReader(delta, verify=False) as reader:  # opens at the payload
                while chunk := reader.read(COPY_CHUNK):
                    digest.update(chunk)
                    encoder.write(chunk)
            if digest.hexdigest() != oid:
                raise ObjectCorruptError(oid, digest.hexdigest())
            encoder.finish(oid)
        except BaseException:
            self._store._discard_temp(file, tmp_path)
            raise
        self._tmp_path.unlink(missing_ok=True)
        self._file, self._tmp_path = file, tmp_path

    def commit_received(self) -> str:
        """Store the payload bytes received so far as a U8 object, when the input ended early."""
        partial = UnsizedObjectWriter(self._store)
        try:
            self._settle_comparisons(0)
            if self._same is not None and not self._small:
                self._comparing.append((self._written, 0, self._same.compare_rest()))
                self._settle_comparisons(0)
            if self._same is not None:
                for chunk in self._same.iter_prefix(self._written):
                    partial.write(chunk)
            else:
                self._replay_received(partial)
        except BaseException:
            partial.abort()
            raise
        finally:
            self.abort()
        return partial.commit()

    def _replay_received(self, partial: UnsizedObjectWriter) -> None:
        if self._memory is not None:
            partial.write(self._memory)
            return
        assert self._file is not None
        if self._encoder is not None:
            for chunk in self._encoder.replay():
                partial.write(chunk)
            return
        self._file.seek(len(self._header))
        for chunk in iter(lambda: self._file.read(COPY_CHUNK), b""):  # type: ignore[union-attr]
            partial.write(chunk)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._wait_for_hash()
        while self._comparing:  # they read the expected object, closed below
            with contextlib.suppress(Exception):
                self._comparing.popleft()[2].result()
        for expected in (self._same, self._compared):
            if expected is not None:
                expected.close()  # and the delta base, on the compared object's chain
        self._same = self._compared = self._delta_base = None
        if self._encoder is not None:
            self._encoder.abort()
            self._encoder = None
        if self._file is not None:
            self._store._discard_temp(self._file, self._tmp_path)
            self._file = None
        self._memory = None


class UnsizedObjectWriter:
    """Streams a U8 object whose length is known only at the end (opaque files).

    The payload goes to a temp file first; :meth:`commit` then streams it
    through an :class:`ObjectWriter` of the now known size. This costs a
    second pass, which only files that are neither torch zips nor
    safetensors pay.
    """

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self._file, self._tmp_path = store._open_temp()
        self._written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        fileio.write_all(self._file, data)
        self._written += len(data)

    def commit(self) -> str:
        self._file.flush()
        self._file.seek(0)
        try:
            final = ObjectWriter(self._store, "U8", (self._written,), self._written)
            try:
                buffer = bytearray(COPY_CHUNK)
                while count := self._file.readinto(buffer):
                    final.write(memoryview(buffer)[:count])
            except BaseException:
                final.abort()
                raise
            oid = final.commit()
        finally:
            self.abort()
        return oid

    def abort(self) -> None:
        self._store._discard_temp(self._file, self._tmp_path)
