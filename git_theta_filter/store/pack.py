"""Packs: many stored objects in one file, found through a sorted index.

Specified in ``docs/store.md`` ("Packs")::

    theta/packs/pack-<h>.pack
        "\\x89thp" 01 00 00 00, then the entries
    theta/packs/pack-<h>.idx
        "\\x89thi" 01 00 00 00 <count: u32>,
        <count> × (oid: 32 bytes, offset: u64, length: u64), sorted by oid,
        h, and the sha256 of everything before it

h, the pack's name, is the sha256 of the index's bytes before it (which
objects the pack holds, and where), or, when a pack of other bytes already has
that name, the sha256 of the pack's bytes.

An entry is a whole stored object (canonical or encoded, see ``encoded.py``);
it describes itself, so it is verified like a loose object when it is read. A
pack is written in ``theta/tmp`` and linked into place with its index last, so
a reader that finds an index finds a complete pack.
"""

from __future__ import annotations

import bisect
import errno
import filecmp
import hashlib
import os
import re
import stat
import struct
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ThetaError
from ..threads import LazyThreadPool
from . import fileio
from .object_format import ObjectFormatError

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = [
    "PACK_MAGIC",
    "INDEX_MAGIC",
    "PackError",
    "PackTruncatedError",
    "CorruptPackEntryError",
    "ObjectNotInPackError",
    "PackIndex",
    "PackWriter",
    "open_pack_file",
    "pack_paths",
]

PACK_MAGIC = b"\x89thp"
INDEX_MAGIC = b"\x89thi"
VERSION = 1
_PACK_HEADER = struct.Struct("<4sB3x")
_INDEX_HEADER = struct.Struct("<4sB3xI")
_RECORD = struct.Struct("<32sQQ")
_TRAILER = 64
# The pack being written is written out in pieces of about this size.
_WRITE_FROM = 1 << 20
# Appends objects added with PackWriter.add_later(), in order; at most this many
# batches wait for it.
_appender = LazyThreadPool(1, "theta-pack-append")
_BATCHES_WAITING = 4
# An index larger than this was not written by us (it would list 20 million objects).
MAX_INDEX_BYTES = 1 << 30
_INDEX_NAME = re.compile(r"pack-[0-9a-f]{64}\.idx\Z")


class PackError(ThetaError):
    """A pack or its index is not as docs/store.md specifies."""

    def __init__(self, pack: Path, reason: str) -> None:
        super().__init__(
            f"pack {pack.name} is corrupt: {reason}",
            hint="run `git theta fsck` (it moves the pack aside), then `git theta fetch` "
            "to restore its objects",
        )
        self.pack = pack
        self.reason = reason


class PackTruncatedError(PackError):
    """The pack file is shorter than its index says."""


class CorruptPackEntryError(ObjectFormatError):
    """A pack entry that does not decode to its object."""

    def __init__(self, oid: str, pack: Path, reason: str) -> None:
        super().__init__(oid, f"{reason} (in {pack.name})")
        self.pack = pack


class ObjectNotInPackError(ThetaError):
    """A pack asked for an entry its index does not list.

    Not a missing object: the object may be loose or in another pack. ``reason`` is
    what ``git theta fsck`` reports when a pack's index lists an entry it cannot find.
    """

    def __init__(self, oid: str, pack: Path) -> None:
        super().__init__(
            f"pack {pack.name} does not hold object {oid}",
            hint="the object may be stored loose or in another pack: run `git theta fsck` to "
            "check every stored copy, then `git theta fetch` to restore any that is missing",
        )
        self.oid = oid
        self.pack = pack
        self.reason = f"not in the index of {pack.name}"


def open_pack_file(pack: Path, path: Path | None = None) -> int:
    """A blocking read-only descriptor of ``path`` (default: ``pack``), a file of the pack
    ``pack``. A symbolic link is never followed and anything but a regular file (a FIFO
    that would block, a device that never ends) is refused, as for loose objects: a
    store may be another repository's (``store/repository.py``)."""
    path = path or pack
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PackError(pack, f"{path.name} is a symbolic link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PackError(pack, f"{path.name} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def pack_paths(packs_dir: Path) -> list[Path]:
    """The ``.pack`` files whose index is in place, in name order."""
    try:
        names = os.listdir(packs_dir)
    except FileNotFoundError:
        return []
    return sorted(packs_dir / f"{name[:-4]}.pack" for name in names if _INDEX_NAME.match(name))


class PackIndex:
    """A pack's index, checked when loaded, searched by bisection."""

    def __init__(self, pack: Path) -> None:
        self.pack = pack
        with open(open_pack_file(pack, pack.with_suffix(".idx")), "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_INDEX_BYTES:
                raise PackError(pack, f"index of {size} bytes is over the limit")
            data = file.read()
        if len(data) < _INDEX_HEADER.size + _TRAILER:
            raise PackError(pack, "index is shorter than its header")
        magic, version, count = _INDEX_HEADER.unpack_from(data)
        if magic != INDEX_MAGIC or version != VERSION:
            raise PackError(pack, "index does not start with the version-1 magic")
        if len(data) != _INDEX_HEADER.size + count * _RECORD.size + _TRAILER:
            raise PackError(pack, f"index of {len(data)} bytes cannot hold {count} entries")
        if hashlib.sha256(data[:-32]).digest() != data[-32:]:
            raise PackError(pack, "index checksum does not match")
        if pack.name != f"pack-{data[-64:-32].hex()}.pack":
            raise PackError(pack, "name does not match the name its index gives")
        self._data = data
        self.count = count
        # The first byte of every entry's oid, in order: a lookup narrows its bisection to
        # the entries of its key's first byte (about 1/256 of them) in C.
        self._first_bytes = data[
            _INDEX_HEADER.size : _INDEX_HEADER.size + count * _RECORD.size : _RECORD.size
        ]
        pack_size = os.stat(pack).st_size
        previous = b""
        for position in range(count):
            oid, offset, length = self._record(position)
            if oid <= previous:
                raise PackError(pack, "index entries are not sorted")
            previous = oid
            if offset < _PACK_HEADER.size:
                raise PackError(pack, f"entry {oid.hex()} overlaps the pack header")
            if offset + length > pack_size:
                raise PackTruncatedError(pack, f"entry {oid.hex()} runs past the end of the pack")

    def _record(self, position: int) -> tuple[bytes, int, int]:
        return _RECORD.unpack_from(self._data, _INDEX_HEADER.size + position * _RECORD.size)

    def find(self, oid: str) -> tuple[int, int] | None:
        """(offset, length) of the object's entry, or None."""
        key = bytes.fromhex(oid)
        data = self._data
        low = bisect.bisect_left(self._first_bytes, key[0])
        high = bisect.bisect_right(self._first_bytes, key[0], low)
        while low < high:
            # Compares slices of the index itself: a checkout of thousands of small
            # objects looks each one up, and unpacking every probed record cost more.
            middle = (low + high) // 2
            start = _INDEX_HEADER.size + middle * _RECORD.size
            found = data[start : start + 32]
            if found == key:
                _, offset, length = _RECORD.unpack_from(data, start)
                return offset, length
            if found < key:
                low = middle + 1
            else:
                high = middle
        return None

    def entries(self) -> Iterator[tuple[str, int, int]]:
        """(oid, offset, length) of every entry, in oid order."""
        for position in range(self.count):
            oid, offset, length = self._record(position)
            yield oid.hex(), offset, length


class PackWriter:
    """Appends stored objects to a new pack in ``tmp_dir``; :meth:`finish` links it into place.

    Objects added are readable at once through :attr:`fd` and :meth:`find`,
    so a clean can read back what it wrote before the pack is finished.
    """

    def __init__(self, tmp_dir: Path, fsync: bool = False) -> None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=f"{os.getpid()}-", suffix=".pack")
        self._file = os.fdopen(fd, "w+b", buffering=0)
        self.fd = fd  # for readers of what is already written (os.pread)
        self._path = Path(name)
        self._fsync = fsync
        self._entries: dict[str, tuple[int, int]] = {}
        self._size = 0
        # Appended bytes not yet written: thousands of small objects a clean cost a
        # write each otherwise (a fifth of the clean of 6,000 tensors of 16 KB).
        self._unwritten = bytearray()
        # Objects added with add_later(): the batch being collected, the ids of every
        # one not yet appended, the batches handed to the appending thread, and the
        # first error that thread met (every later batch is then skipped).
        self._batch: list[tuple[str, Callable[[], bytes]]] = []
        self._batch_size = 0
        self._later: set[str] = set()
        self._submitted: deque[Future] = deque()
        self._error: BaseException | None = None
        try:
            self._append(_PACK_HEADER.pack(PACK_MAGIC, VERSION))
        except BaseException:
            self.abort()
            raise

    def _append(self, data: bytes) -> None:
        self._unwritten += data
        self._size += len(data)
        if len(self._unwritten) >= _WRITE_FROM:
            self._write_out()

    def _write_out(self) -> None:
        """Write out the bytes appended since the last time."""
        if self._unwritten:
            fileio.write_all(self._file, self._unwritten)
            self._unwritten = bytearray()

    def __len__(self) -> int:
        self._settle()
        return len(self._entries)

    @property
    def size(self) -> int:
        self._settle()
        return self._size

    def add(self, oid: str, stored: bytes) -> None:
        """Append one stored object (its whole canonical or encoded bytes) unless it is here."""
        self._settle()
        if oid not in self._entries:
            self._entries[oid] = (self._size, len(stored))
            self._append(stored)

    def add_later(self, oid: str, make_stored: Callable[[], bytes], size: int) -> None:
        """Append the object ``make_stored()`` gives (its stored bytes), unless it is here;
        ``size`` is about how many bytes it takes.

        The call and the append run on a thread of their own, in batches of about
        :data:`_WRITE_FROM` bytes, in the order added: a clean of thousands of small
        objects encodes, hashes and writes them there while its own thread parses
        the next ones. Every other method waits for what was added so far; an error
        of that thread is raised by the next call.
        """
        if self._error is not None:
            raise self._error
        if oid in self._later or oid in self._entries:
            return
        self._later.add(oid)
        self._batch.append((oid, make_stored))
        self._batch_size += size
        if self._batch_size >= _WRITE_FROM:
            self._submit_batch()

    def _submit_batch(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._batch_size = self._batch, [], 0
        self._submitted.append(_appender.submit(self._append_batch, batch))
        while len(self._submitted) > _BATCHES_WAITING:  # bounds the memory they hold
            self._submitted.popleft().result()

    def _append_batch(self, batch: list[tuple[str, Callable[[], bytes]]]) -> None:
        if self._error is not None:
            return
        try:
            for oid, make_stored in batch:
                stored = make_stored()
                self._entries[oid] = (self._size, len(stored))
                self._append(stored)
        except BaseException as exc:
            self._error = exc

    def _settle(self, raise_error: bool = True) -> None:
        """Wait until every object added so far is appended; raise the thread's error."""
        self._submit_batch()
        while self._submitted:
            self._submitted.popleft().result()
        self._later.clear()
        if raise_error and self._error is not None:
            raise self._error

    def find(self, oid: str) -> tuple[int, int] | None:
        """(offset, length) of an object added, readable through :attr:`fd` once this returns."""
        if oid in self._later:
            self._settle()
        entry = self._entries.get(oid)
        if entry is not None:
            self._settle()
            self._write_out()
        return entry

    def oids(self) -> list[str]:
        self._settle()
        return list(self._entries)

    def finish(self, packs_dir: Path) -> Path | None:
        """Write the index and link both into ``packs_dir``; the pack's path, or None if empty."""
        try:
            self._settle()
            if not self._entries:
                return None
            records = b"".join(
                _RECORD.pack(bytes.fromhex(oid), offset, length)
                for oid, (offset, length) in sorted(self._entries.items())
            )
            self._write_out()
            if self._fsync:
                os.fsync(self.fd)
            packs_dir.mkdir(parents=True, exist_ok=True)
            index = _INDEX_HEADER.pack(INDEX_MAGIC, VERSION, len(self._entries)) + records
            name = self._link_pack(packs_dir, hashlib.sha256(index).digest())
            index += name
            index += hashlib.sha256(index).digest()
            final = packs_dir / f"pack-{name.hex()}.pack"
            index_tmp = self._path.with_suffix(".idx")
            with open(index_tmp, "wb") as file:
                file.write(index)
                if self._fsync:
                    os.fsync(file.fileno())
            # The index goes last: a reader that sees it sees the whole pack.
            _link_read_only(index_tmp, final.with_suffix(".idx"))
            return final
        finally:
            self.abort()

    def _link_pack(self, packs_dir: Path, name: bytes) -> bytes:
        """Link the pack into ``packs_dir`` as ``pack-<name>.pack``, ``name`` being the
        sha256 of its index's header and records; the name it got.

        Named by its index, not by a hash of its bytes: each entry is verified by its
        oid when read, and hashing every byte again cost a clean of 6,000 small tensors
        20 ms. A pack of that name with other bytes (the same objects at the same
        places, one of them damaged, say) must not stand in for this one, which gc
        would then delete with the copies it replaced: this one is then named by the
        sha256 of its bytes, as packs were before (docs/store.md, "Packs").
        """
        final = packs_dir / f"pack-{name.hex()}.pack"
        if _link_read_only(self._path, final) or filecmp.cmp(self._path, final, shallow=False):
            return name
        with open(self._path, "rb") as file:
            name = hashlib.file_digest(file, "sha256").digest()
        _link_read_only(self._path, packs_dir / f"pack-{name.hex()}.pack")
        return name

    def abort(self) -> None:
        """Remove the temp files (a finished pack stays linked in place)."""
        self._batch.clear()
        self._settle(raise_error=False)
        if not self._file.closed:
            self._file.close()
            self.fd = -1
        self._path.unlink(missing_ok=True)
        self._path.with_suffix(".idx").unlink(missing_ok=True)


def _link_read_only(source: Path, target: Path) -> bool:
    """Link ``source`` to ``target``, never replacing an existing file; False if one was
    there."""
    os.chmod(source, 0o444)
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    return True
