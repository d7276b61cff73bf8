"""Files as a skeleton with object payloads spliced in: the one layout of every stored file.

Every stored file, whatever its format, is described the same way: the
manifest's ``splice`` lines say which byte ranges are object payloads, and the
skeleton object holds all the other bytes, in order.

* :class:`LayoutBuilder` records that description while a file streams in (clean);
* :func:`write_spliced` streams the file back out (smudge), :func:`read_skeleton`
  reads its skeleton within a bound, and :class:`SplicedReader` is a seekable
  view of it for readers that need random access (a zip's central directory);
* :class:`SplicedFile` is a file still to be written in this form: the merge
  driver builds merged model files from objects already in the store and
  streams them through clean like any other file.
"""

from __future__ import annotations

import bisect
import collections
import io
import itertools
import os
import zlib
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ThetaError
from ..manifest import Manifest, Splice
from ..store.encoded import ObjectReader, StoredObject
from ..store.local import COPY_CHUNK, LocalStore
from ..store.object_format import ObjectFormatError
from ..threads import LazyThreadPool

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = [
    "LayoutBuilder",
    "write_spliced",
    "read_skeleton",
    "SplicedReader",
    "SplicedFile",
    "payload_crc32",
    "ObjectType",
    "first_misfit",
    "MAX_SKELETON_BYTES",
    "SkeletonTooLargeError",
]

# The skeleton is held in memory on both clean and smudge. Real checkpoints
# have skeletons of kilobytes to a few megabytes (data.pkl of a huge optimizer
# state); past this limit the file is stored opaque instead.
MAX_SKELETON_BYTES = 256 << 20

# Decodes small objects ahead of the writer (see _SmallPayloads).
_decoder_pool = LazyThreadPool(2, "theta-small-decode")


class SkeletonTooLargeError(ThetaError):
    pass


class LayoutBuilder:
    """Collects skeleton bytes and splices in file order as a file streams in."""

    def __init__(self) -> None:
        self.skeleton = bytearray()
        self.splices: list[Splice] = []
        self.size = 0

    def reset(self) -> None:
        """Forget everything recorded: the file is about to be described anew."""
        self.skeleton = bytearray()
        self.splices = []
        self.size = 0

    def check_room(self, size: int) -> None:
        """Refuse, before anything is read,
        ``size`` more bytes that would pass the skeleton limit.
        """
        if len(self.skeleton) + size > MAX_SKELETON_BYTES:
            raise SkeletonTooLargeError(f"more than {MAX_SKELETON_BYTES} bytes of non-tensor data")

    def add_skeleton(self, data: bytes | bytearray | memoryview) -> None:
        self.check_room(len(data))
        self.skeleton += data
        self.size += len(data)

    def add_splice(self, length: int, oid: str) -> None:
        self.splices.append(Splice(self.size, length, oid))
        self.size += length


def write_spliced(
    skeleton: bytes | bytearray,
    splices: list[Splice],
    store: LocalStore,
    write: Callable[[bytes | memoryview], object],
    path: str | None = None,
    opened: Mapping[str, StoredObject] | None = None,
    give: Callable[[bytes | memoryview], object] | None = None,
) -> None:
    """Stream the file: skeleton bytes up to each splice, then that object's payload.

    ``opened`` holds objects the caller has already opened and checked (pack
    entries: they hold no file), read from there instead of being looked up again.
    ``give``, if given, is called instead of ``write`` with bytes that nothing
    changes afterwards (decoded blocks, runs of small objects), which it may
    keep without a copy; ``write``'s bytes may change once it returns.
    """
    hand_over = give or write
    view = memoryview(skeleton)
    cursor = 0  # offset in the file
    taken = 0  # bytes of the skeleton already written
    buffer = bytearray(COPY_CHUNK)
    with _SmallRuns(view, splices, opened or {}) as runs:
        index = 0
        while index < len(splices):
            run = runs.run_at(index)
            if run is not None:  # splices [index, end) with the skeleton bytes between them
                end, data, skeleton_bytes = run
                hand_over(data)
                taken += skeleton_bytes
                cursor = splices[end - 1].end
                index = end
                continue
            splice = splices[index]
            gap = splice.offset - cursor
            if gap:
                write(view[taken : taken + gap])
                taken += gap
            _write_payload(store, splice, write, hand_over, buffer, path, opened)
            cursor = splice.end
            index += 1
    if taken < len(view):
        write(view[taken:])


# Small objects are read and decoded on worker threads, in runs of about this many
# bytes read or made, while this thread writes the runs before: a checkout of 6,000 tensors
# of 16 KB spent half its main thread on one read, one zstd decode and one copy each.
# The file's bytes count too: a megabyte of zeros is stored in tens of bytes, and
# runs counted by stored bytes alone joined a whole file of them into one buffer.
_SMALL_BATCH = 1 << 20
_SMALL_OBJECT = 1 << 20  # stored size up to which an object is read whole
_BATCHES_AHEAD = 4


@dataclass
class _Run:
    """Splices ``[first, end)``, whose objects are open, small and in one block against
    no base. Its bytes start at file offset ``file_start`` (the end of the splice before),
    and the skeleton bytes among them at skeleton offset ``skeleton_start``."""

    first: int
    end: int
    file_start: int
    skeleton_start: int
    splices: list[Splice]
    objects: list[StoredObject]


class _SmallRuns:
    """The file's bytes over each run of splices whose objects are already open, small and
    in one block against no base (pack entries, :meth:`StoredObject.whole_in_one_read`),
    skeleton bytes between them included: put together on worker threads, run by run
    in file order, as one ``bytes`` each. Neighbouring pack entries are read with one
    read. At most :data:`_BATCHES_AHEAD` runs are made and not yet written, which
    bounds memory. Leaving the block waits for the workers, so the caller may close
    the objects afterwards.
    """

    def __init__(
        self, skeleton: memoryview, splices: list[Splice], opened: Mapping[str, StoredObject]
    ) -> None:
        self._skeleton = skeleton
        self._runs: list[_Run] = []  # the last run first
        self._pending: collections.deque[tuple[_Run, Future]] = collections.deque()
        run: _Run | None = None
        size = 0
        payload_before = 0  # payload bytes before the current splice
        for index, splice in enumerate(splices):
            stored = opened.get(splice.oid)
            small = stored is not None and stored.size <= _SMALL_OBJECT and stored.whole_in_one_read
            if run is not None and (not small or size >= _SMALL_BATCH):
                run.end = index
                self._runs.append(run)
                run, size = None, 0
            if stored is not None and small:
                if run is None:
                    file_start = splices[index - 1].end if index else 0
                    run = _Run(index, index, file_start, file_start - payload_before, [], [])
                run.splices.append(splice)
                run.objects.append(stored)
                # The larger of what is read (the stored object) and what the run's buffer
                # holds (this payload and the skeleton bytes before it).
                made = splice.end - (splices[index - 1].end if index else 0)
                size += max(stored.size, made)
            payload_before += splice.length
        if run is not None:
            run.end = len(splices)
            self._runs.append(run)
        self._runs.reverse()  # popped from the end, in file order

    def __enter__(self) -> _SmallRuns:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._runs.clear()
        while self._pending:
            _, future = self._pending.popleft()
            future.cancel()
            with suppress(BaseException):
                future.result()  # a running batch reads objects the caller will close

    def _submit_ahead(self) -> None:
        while self._runs and len(self._pending) < _BATCHES_AHEAD:
            run = self._runs.pop()
            self._pending.append((run, _decoder_pool.submit(_make_run, self._skeleton, run)))

    def run_at(self, index: int) -> tuple[int, bytes, int] | None:
        """(end, the file's bytes from the end of splice ``index - 1`` to the end of splice
        ``end - 1``, how many of them are skeleton bytes) if a run starts at ``index``,
        else None; asked in file order."""
        self._submit_ahead()
        if not self._pending or self._pending[0][0].first != index:
            return None
        run, future = self._pending.popleft()
        data, skeleton_bytes = future.result()
        self._submit_ahead()
        return run.end, data, skeleton_bytes


def _make_run(skeleton: memoryview, run: _Run) -> tuple[bytes, int]:
    """A run's bytes, and how many of them are skeleton bytes."""
    parts: list[bytes | bytearray | memoryview] = []
    position = run.skeleton_start
    previous_end = run.file_start
    for splice, payload in zip(run.splices, _decode_batch(run.objects), strict=True):
        gap = splice.offset - previous_end
        parts.append(skeleton[position : position + gap])
        position += gap
        if len(payload) != splice.length:
            raise ObjectFormatError(
                splice.oid, f"payload is {len(payload)} bytes, the manifest says {splice.length}"
            )
        parts.append(payload)
        previous_end = splice.end
    return b"".join(parts), position - run.skeleton_start


def _decode_batch(objects: list[StoredObject]) -> list[bytes | bytearray | memoryview]:
    """Each object's payload; runs of neighbouring entries of one file are read at once."""
    payloads: list[bytes | bytearray | memoryview] = []
    position = 0
    while position < len(objects):
        fd, start, length = objects[position].region
        end = position + 1
        while end < len(objects):
            next_fd, next_start, next_length = objects[end].region
            if next_fd != fd or next_start != start + length:
                break
            length += next_length
            end += 1
        data = memoryview(os.pread(fd, length, start))
        offset = 0
        for stored in objects[position:end]:
            size = stored.size
            payloads.append(stored.payload_from_stored(data[offset : offset + size]))
            offset += size
        position = end
    return payloads


def read_skeleton(store: LocalStore, manifest: Manifest, path: str | None = None) -> bytes:
    """The skeleton object's payload: every byte of the file outside its splices.

    Bounded before anything is read, so a hostile manifest cannot make a reader
    allocate more than :data:`MAX_SKELETON_BYTES`. ``path`` names the work-tree
    file in errors.
    """
    if manifest.skeleton_length > MAX_SKELETON_BYTES:
        raise ObjectFormatError(
            manifest.skeleton, f"skeleton of {manifest.skeleton_length} bytes is over the limit"
        )
    file, header = store.open_verified(manifest.skeleton, path)
    with file:
        if header.nbytes != manifest.skeleton_length:
            raise ObjectFormatError(
                manifest.skeleton,
                f"payload is {header.nbytes} bytes, the manifest says {manifest.skeleton_length}",
            )
        return file.read(header.nbytes)


def _write_payload(
    store: LocalStore,
    splice: Splice,
    write: Callable[[memoryview], object],
    give: Callable[[bytes | memoryview], object],
    buffer: bytearray,
    path: str | None,
    opened: Mapping[str, StoredObject] | None,
) -> None:
    # The caller checks a hash over every byte it writes (smudge: the whole
    # file's sha256), so the object's own hash is not computed a second time.
    stored = opened.get(splice.oid) if opened else None
    file: io.RawIOBase
    if stored is not None:
        file, header = ObjectReader(stored, verify=False), stored.header
    else:
        file, header = store.open_object(splice.oid, path, verify=False)
    with file:
        if header.nbytes != splice.length:
            raise ObjectFormatError(
                splice.oid, f"payload is {header.nbytes} bytes, the manifest says {splice.length}"
            )
        if isinstance(file, ObjectReader) and (encoded := file.stored.encoded) is not None:
            # Each block is decoded into bytes of its own, not into the buffer.
            if encoded.block_count == 1:  # a small object: no read-ahead to set up
                give(memoryview(file.stored.decoded_block(0)))
                return
            for block in file.payload_blocks():
                give(block)
            return
        left = splice.length
        chunk = memoryview(buffer)
        while left:
            count = file.readinto(chunk[: min(left, len(chunk))])
            if not count:
                raise ObjectFormatError(splice.oid, "payload ends early")
            write(chunk[:count])
            left -= count


class SplicedReader(io.RawIOBase):
    """A seekable, read-only view of a spliced file, for zipfile to read a central directory.

    Only the regions that are read are fetched; payloads come from the store.
    Without a store only the skeleton can be read, and a read that reaches
    into a payload raises :class:`OSError`: readers of a file's structure
    (``zip_directory.py``) so never load tensor data, whatever a crafted
    central directory says.
    """

    def __init__(
        self,
        skeleton: bytes | bytearray,
        splices: list[Splice],
        size: int,
        store: LocalStore | None,
    ) -> None:
        self._skeleton = memoryview(skeleton)
        self._splices = splices
        self._size = size
        self._store = store
        self._pos = 0
        # Splices are in file order and do not overlap: a read finds its first splice by
        # bisection, and a position p in the gap before splice i is skeleton byte
        # p - _payload_before[i]. (A walk from the start made zipfile's one read per
        # record quadratic: 6,000 tensors took minutes.)
        self._ends = [splice.end for splice in splices]
        self._payload_before = [0, *itertools.accumulate(splice.length for splice in splices)]

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

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes; without a store, a read into a payload is refused before
        its buffer is allocated (a crafted central directory may ask for the whole file)."""
        if size is None or size < 0:
            return self.readall()
        want = min(size, max(0, self._size - self._pos))
        if self._store is None:
            self._refuse_payloads(self._pos, self._pos + want)
        return super().read(want)

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``, as a seek and a read give them, without
        moving the position. A range inside the skeleton is one slice of it: the zip
        directory reader reads two headers of each of thousands of records."""
        end = min(offset + size, self._size)
        index = bisect.bisect_right(self._ends, offset)  # the first splice that ends after
        gap_end = self._splices[index].offset if index < len(self._splices) else self._size
        if 0 <= offset < end <= gap_end:
            start = offset - self._payload_before[index]
            return bytes(self._skeleton[start : start + (end - offset)])
        position = self._pos
        try:
            self.seek(offset)
            return self.read(size)
        finally:
            self._pos = position

    def _refuse_payloads(self, start: int, end: int) -> None:
        for index in range(bisect.bisect_right(self._ends, start), len(self._splices)):
            splice = self._splices[index]
            if splice.offset >= end:
                return
            if splice.length:
                offset = max(start, splice.offset)
                raise OSError(f"offset {offset} lies in a tensor payload, not in the skeleton")

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        out = io.BytesIO()
        pos, end = self._pos, self._pos + want
        index = bisect.bisect_right(self._ends, pos)  # the first splice that ends after pos
        while pos < end:
            splice = self._splices[index] if index < len(self._splices) else None
            gap_end = splice.offset if splice else self._size
            if splice is None or pos < gap_end:  # skeleton bytes up to the next splice
                hi = min(gap_end, end)
                start = pos - self._payload_before[index]
                out.write(self._skeleton[start : start + (hi - pos)])
                pos = hi
                continue
            hi = min(splice.end, end)
            if pos < hi:
                if self._store is None:
                    self._refuse_payloads(pos, hi)
                # Bytes [pos, hi) are this splice's payload, so _refuse_payloads raised.
                assert self._store is not None
                file, header = self._store.open_object(splice.oid)
                with file:
                    file.seek(header.data_offset + pos - splice.offset)
                    out.write(file.read(hi - pos))
                pos = hi
            index += 1
        data = out.getvalue()
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


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
    file, header = store.open_verified(oid)
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


ObjectType = tuple[str, tuple[int, ...]]  # an object's dtype and shape


def first_misfit(
    store: LocalStore, wanted: Mapping[str, tuple[str, ObjectType]], path: str
) -> tuple[str, str, str] | None:
    """Of ``wanted`` (a storage's or tensor's name -> its object's id and the dtype and
    shape clean writes that object with), the first whose object is typed otherwise:
    its name, what the object is (``object <oid> of U8 [16]``) and what it should be
    (``F32 [4]``); None when every object fits.

    A stored file is cleaned again after the merge driver rewrites it, and the new
    manifest must name the merge's objects: an object of the right bytes but another
    type would come back as another id. The objects' headers are read in one pass, as
    a smudge opens those of thousands of small tensors (one open each cost a merge of
    6,000 tensors half a second per side).
    """
    found: dict[str, ObjectType] = {}
    with store.bulk_lookups():
        for stored in store.open_all_readable((oid for oid, _ in wanted.values()), path):
            found[stored.oid] = (stored.header.dtype, stored.header.shape)
            stored.close()
    for name, (oid, kind) in wanted.items():
        if found[oid] != kind:
            return name, f"object {oid} of {_type_text(found[oid])}", _type_text(kind)
    return None


def _type_text(kind: ObjectType) -> str:
    return f"{kind[0]} {list(kind[1])}"
