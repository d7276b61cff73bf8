"""The local object store: ``<git common dir>/theta/objects/aa/bb/<oid>``.

Layout and guarantees are specified in ``docs/store.md``:

* an object's id is the sha256 of its file's bytes (64 lowercase hex digits);
* objects are written to ``theta/tmp`` first and then hard-linked into place,
  so a reader never sees a partial object and a good existing object is never
  rewritten (two writers of the same object both succeed); a damaged one is
  replaced whole, in one rename, by the good bytes being written;
* objects are read-only files, and every read that uses their bytes checks
  them against their id first (:meth:`LocalStore.open_verified`).

Durability: object files are not fsync'ed, like Git's own loose objects by
default (``core.fsync``). A crash can at worst leave an object that fails its
hash; ``git theta fsck`` finds it and the whole-file sha256 check on smudge
refuses to produce a wrong file from it. Set ``GIT_THETA_FSYNC=1`` to fsync
each object before it is linked into place.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import ThetaError
from .integrity import VERIFIED, ObjectCorruptError, file_sha256, same_bytes
from .object_format import ObjectFormatError, ObjectHeader, encode_header, read_header

__all__ = [
    "LocalStore",
    "ObjectWriter",
    "ObjectMissingError",
    "StoreWriteError",
    "LOCAL_WRITE_ERRNOS",
    "COPY_CHUNK",
    "is_valid_oid",
    "open_object_file",
]

COPY_CHUNK = 1 << 20
_OID_RE = re.compile(r"[0-9a-f]{64}\Z")


def is_valid_oid(oid: str) -> bool:
    return bool(_OID_RE.match(oid))


class ObjectMissingError(ThetaError):
    """An object a manifest needs is not in the local store."""

    def __init__(self, oid: str, path: str | None = None) -> None:
        where = f"{path}: " if path else ""
        super().__init__(
            f"{where}tensor object {oid} is missing from the local store",
            hint="run `git theta fetch` to download it, or set GIT_THETA_SKIP_SMUDGE=1 to check "
            "out the manifest instead",
        )
        self.oid = oid
        self.path = path


# Errors that only writing can cause: the disk is full, over quota, read-only,
# or the file is over the process's size limit (RLIMIT_FSIZE).
LOCAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


class StoreWriteError(ThetaError):
    """The local disk refused a write into the store: full, over quota, read-only,
    or a file size limit.
    """

    def __init__(self, theta_dir: Path, error: OSError, path: str | None = None) -> None:
        where = f"{path}: " if path else ""
        super().__init__(
            f"{where}cannot write objects to {theta_dir}: {error.strerror or error}",
            hint="free some disk space (`git theta gc` deletes objects nothing needs), "
            "then run the command again",
        )
        self.theta_dir = theta_dir
        self.errno = error.errno
        self.path = path


# The object's sha256 runs on this thread while the caller's thread writes
# the same bytes to the temp file; both release the GIL on large buffers.
_object_hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="theta-object-hash")
# Below this, handing a buffer to the thread costs more than it saves.
_HASH_IN_PARALLEL_FROM = 1 << 16


def _write_all(file: BinaryIO, data: bytes | bytearray | memoryview) -> None:
    """Write every byte to an unbuffered file, which may take fewer per call."""
    view = memoryview(data).cast("B")
    while view:
        view = view[file.write(view) :]


class ObjectWriter:
    """Streams one object with a known payload size into the store.

    The header goes first, so the object id is computed in the same pass that
    writes the payload; nothing is read back.

    When the store expects an object with the same header (see
    :meth:`LocalStore.expecting`), the payload is first compared with that
    object's instead: while they agree nothing is hashed or written, and if
    every byte agrees the result is that object. At the first chunk that
    differs, the agreeing prefix is copied from the expected object and the
    write goes on as usual.
    """

    def __init__(self, store: LocalStore, dtype: str, shape: tuple[int, ...], nbytes: int) -> None:
        self._store = store
        self._expected = nbytes
        self._written = 0
        self._header = encode_header(dtype, shape, nbytes)
        self._hash = hashlib.sha256(self._header)
        self._same = store._take_expected(self._header)
        self._file: BinaryIO | None = None
        self._tmp_path: Path | None = None
        if self._same is None:
            self._start_temp()
        self.oid: str | None = None

    def _start_temp(self) -> None:
        self._file, self._tmp_path = self._store._open_temp()
        try:
            _write_all(self._file, self._header)
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hash and write ``data``; the caller may reuse its buffer when this returns."""
        if self._same is not None:
            if self._same.matches(data):
                self._written += len(data)
                return
            self._diverge()
        assert self._file is not None
        if len(data) < _HASH_IN_PARALLEL_FROM:
            self._hash.update(data)
            _write_all(self._file, data)
        else:
            hashed = _object_hasher.submit(self._hash.update, data)
            try:
                _write_all(self._file, data)
            finally:
                hashed.result()
        self._written += len(data)

    def _diverge(self) -> None:
        """Stop comparing: hash and write the payload bytes that agreed so far,
        read from the expected object.
        """
        assert self._same is not None
        same, self._same = self._same, None
        try:
            self._start_temp()
            assert self._file is not None
            for chunk in same.iter_prefix(self._written):
                self._hash.update(chunk)
                _write_all(self._file, chunk)
        finally:
            same.close()

    def commit(self) -> str:
        if self._written != self._expected:
            self.abort()
            raise ThetaError(f"object payload was {self._written} bytes, expected {self._expected}")
        if self._same is not None:
            self._same.close()
            self.oid = self._same.oid
            return self.oid
        assert self._file is not None and self._tmp_path is not None
        self.oid = self._store._link_temp(self._file, self._tmp_path, self._hash.hexdigest())
        return self.oid

    def commit_received(self) -> str:
        """Store the payload bytes received so far as a U8 object, when the input ended early."""
        partial = UnsizedObjectWriter(self._store)
        try:
            if self._same is not None:
                chunks = self._same.iter_prefix(self._written)
            else:
                assert self._file is not None
                self._file.seek(len(self._header))
                chunks = iter(lambda: self._file.read(COPY_CHUNK), b"")  # type: ignore[union-attr]
            for chunk in chunks:
                partial.write(chunk)
        except BaseException:
            partial.abort()
            raise
        finally:
            self.abort()
        return partial.commit()

    def abort(self) -> None:
        if self._same is not None:
            self._same.close()
        if self._file is not None and self._tmp_path is not None:
            self._store._discard_temp(self._file, self._tmp_path)


class _ExpectedObject:
    """An existing object being compared, chunk by chunk, with a payload that streams in."""

    def __init__(self, oid: str, file: BinaryIO, payload_offset: int) -> None:
        self.oid = oid
        self._file = file  # unbuffered, positioned at the next payload byte to compare
        self._payload_offset = payload_offset
        self._stored = bytearray()  # the expected bytes of the chunk being compared

    def matches(self, data: bytes | bytearray | memoryview) -> bool:
        incoming = memoryview(data).cast("B")
        if len(self._stored) < len(incoming):
            self._stored = bytearray(len(incoming))
        # The count check keeps stale bytes of the reused buffer out of the
        # comparison; startswith() compares with memcmp, where memoryview's
        # == would go byte by byte, thirty times slower.
        count = self._file.readinto(memoryview(self._stored)[: len(incoming)])
        return count == len(incoming) and self._stored.startswith(incoming)

    def iter_prefix(self, size: int) -> Iterator[memoryview]:
        """The first ``size`` payload bytes, in chunks of one reused buffer."""
        self._file.seek(self._payload_offset)
        buffer = memoryview(bytearray(min(size, COPY_CHUNK) or 1))
        left = size
        while left:
            count = self._file.readinto(buffer[: min(left, len(buffer))])
            if not count:
                raise ObjectFormatError(self.oid, "payload ends early")
            yield buffer[:count]
            left -= count

    def close(self) -> None:
        self._file.close()


class UnsizedObjectWriter:
    """Streams a U8 object whose length is known only at the end (opaque files).

    The payload goes to a temp file first; :meth:`commit` then writes the
    header and copies the payload behind it, hashing as it goes. This costs a
    second pass, which only files that are neither torch zips nor safetensors pay.
    """

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self._file, self._tmp_path = store._open_temp()
        self._written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        _write_all(self._file, data)
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


def open_object_file(path: Path, oid: str) -> BinaryIO:
    """Open an object file for reading, unbuffered, refusing anything but a regular file.

    A symbolic link is never followed (``O_NOFOLLOW``), so a link planted in
    the store cannot make us read a file outside it; and the file is opened
    without blocking and checked with ``fstat``, so a FIFO or a device planted
    in its place is refused instead of blocking or streaming forever. Raises
    ``FileNotFoundError`` when there is no such file.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ObjectFormatError(oid, "is a symbolic link") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ObjectFormatError(oid, "is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def _subdirectories(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return sorted(entry for entry in path.iterdir() if entry.is_dir() and not entry.is_symlink())


class LocalStore:
    """Objects under ``<theta_dir>/objects``; temp files under ``<theta_dir>/tmp``."""

    def __init__(self, theta_dir: Path) -> None:
        self.theta_dir = Path(theta_dir)
        self.objects_dir = self.theta_dir / "objects"
        self.tmp_dir = self.theta_dir / "tmp"
        self._fsync = os.environ.get("GIT_THETA_FSYNC") == "1"
        # Header bytes -> ids of objects with that header, in file order (see expecting()).
        self._expected: dict[bytes, deque[str]] = {}

    def object_path(self, oid: str) -> Path:
        if not is_valid_oid(oid):
            # Manifests are parsed strictly, but this is the last line of
            # defence against an oid like "../../etc/passwd".
            raise ThetaError(f"invalid object id {oid!r}")
        return self.objects_dir / oid[0:2] / oid[2:4] / oid

    def has(self, oid: str) -> bool:
        return self.object_path(oid).is_file()

    def size(self, oid: str) -> int | None:
        try:
            return self.object_path(oid).stat().st_size
        except FileNotFoundError:
            return None

    def iter_oids(self) -> Iterator[str]:
        """Every object id present in the store (no content check)."""
        # Anything else that lands in objects/ (an editor's backup, .DS_Store) is skipped.
        for first in _subdirectories(self.objects_dir):
            for second in _subdirectories(first):
                for name in sorted(os.listdir(second)):
                    if is_valid_oid(name) and name[0:2] == first.name and name[2:4] == second.name:
                        yield name

    # -- writing -------------------------------------------------------------
    def writer(self, dtype: str, shape: tuple[int, ...], nbytes: int) -> ObjectWriter:
        return ObjectWriter(self, dtype, shape, nbytes)

    @contextmanager
    def expecting(self, oids: Iterable[str]) -> Iterator[None]:
        """Within the block, new objects are first compared with these existing ones.

        ``oids`` are the payload objects of the file's previous version, in
        file order. A new object takes the next one that has its header, and
        if the payloads are equal it *is* that object: neither hashed nor
        written again. A fine-tune that changes a tenth of the tensors then
        costs a read of the unchanged ones instead of a sha256 and a write.
        Like :meth:`_link_temp` finding an object already present, this
        trusts an object to hash to its name; ``git theta fsck`` checks that.
        """
        expected: dict[bytes, deque[str]] = {}
        headers: dict[str, bytes | None] = {}
        for oid in oids:
            if oid not in headers:
                headers[oid] = self._read_raw_header(oid)
            if (header := headers[oid]) is not None:
                expected.setdefault(header, deque()).append(oid)
        self._expected = expected
        try:
            yield
        finally:
            self._expected = {}

    def _read_raw_header(self, oid: str) -> bytes | None:
        """An object's header bytes, or None if it is missing or not valid."""
        try:
            file, header = self.open_object(oid)
        except ThetaError:
            return None
        with file:
            file.seek(0)
            return file.read(header.data_offset)

    def _take_expected(self, header: bytes) -> _ExpectedObject | None:
        """The next expected object with this header, opened at its payload."""
        queue = self._expected.get(header)
        while queue:
            oid = queue.popleft()
            try:
                file = open_object_file(self.object_path(oid), oid)
            except (OSError, ObjectFormatError):
                continue
            file.seek(len(header))
            return _ExpectedObject(oid, file, len(header))
        return None

    def unsized_writer(self) -> UnsizedObjectWriter:
        return UnsizedObjectWriter(self)

    def write_bytes(
        self, data: bytes | bytearray, dtype: str = "U8", shape: tuple[int, ...] | None = None
    ) -> str:
        writer = self.writer(dtype, (len(data),) if shape is None else shape, len(data))
        try:
            writer.write(data)
        except BaseException:
            writer.abort()  # e.g. a full disk: leave no temp file behind
            raise
        return writer.commit()

    def _open_temp(self) -> tuple[BinaryIO, Path]:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix=f"{os.getpid()}-", suffix=".tmp")
        # Unbuffered: payloads arrive in large chunks, and a buffer would copy them once more.
        return os.fdopen(fd, "w+b", buffering=0), Path(name)

    def _discard_temp(self, file: BinaryIO, tmp_path: Path) -> None:
        file.close()
        tmp_path.unlink(missing_ok=True)

    def _link_temp(self, file: BinaryIO, tmp_path: Path, oid: str) -> str:
        try:
            if self._fsync:
                os.fsync(file.fileno())
            file.close()
            self._place(tmp_path, oid)
        finally:
            self._discard_temp(file, tmp_path)
        return oid

    def _place(self, tmp_path: Path, oid: str) -> None:
        """Put the temp file ``tmp_path``, whose bytes hash to ``oid``, into the store.

        ``link()`` never replaces a file, so of two writers of one object the
        first wins and the object is never rewritten in place. An existing
        file that does not hold these bytes (damaged, or not a regular file)
        is moved to ``theta/bad/`` and the good copy renamed over it in one
        step, so that the store can give back what was just added.
        """
        os.chmod(tmp_path, 0o444)
        final = self.object_path(oid)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(tmp_path, final)
        except FileExistsError:
            if self._holds(final, tmp_path, oid):
                return
            self._keep_for_inspection(final, oid)
            os.replace(tmp_path, final)
        VERIFIED.add_path(final)

    def _holds(self, final: Path, tmp_path: Path, oid: str) -> bool:
        """Whether the existing object file ``final`` has the good bytes of ``tmp_path``."""
        try:
            with (
                open_object_file(final, oid) as existing,
                open(tmp_path, "rb", buffering=0) as good,
            ):
                if VERIFIED.knows(existing) or same_bytes(existing, good):
                    VERIFIED.add(existing)
                    return True
        except (OSError, ObjectFormatError):
            pass  # a link, a FIFO, a directory: not an object
        return False

    def _keep_for_inspection(self, final: Path, oid: str) -> None:
        """Link a damaged object's file into ``theta/bad/`` before it is replaced (best effort)."""
        bad = self.theta_dir / "bad" / oid
        try:
            bad.parent.mkdir(parents=True, exist_ok=True)
            bad.unlink(missing_ok=True)
            os.link(final, bad, follow_symlinks=False)
        except OSError:
            pass

    # -- reading -------------------------------------------------------------
    def open_object(self, oid: str, path: str | None = None) -> tuple[BinaryIO, ObjectHeader]:
        """Open an object positioned at its payload, after validating its header.

        ``path`` is the work-tree file that needs the object, for the error message.
        """
        try:
            file = open_object_file(self.object_path(oid), oid)
        except FileNotFoundError:
            raise ObjectMissingError(oid, path) from None
        try:
            header = read_header(oid, file, os.fstat(file.fileno()).st_size)
        except BaseException:
            file.close()
            raise
        return file, header

    def open_verified(self, oid: str, path: str | None = None) -> tuple[BinaryIO, ObjectHeader]:
        """:meth:`open_object`, once the object's bytes are known to hash to its id.

        Every reader that hands out an object's bytes or builds on them uses
        this. The file is hashed on first use in this process, and again after
        any change to it (see :mod:`.integrity`). Raises
        :class:`~.integrity.ObjectCorruptError` for bytes that do not match.
        """
        file, header = self.open_object(oid, path)
        try:
            if not VERIFIED.knows(file):
                self._check_digest(file, oid)
                file.seek(header.data_offset)
        except BaseException:
            file.close()
            raise
        return file, header

    def ensure_verified(self, oid: str, path: str | None = None) -> None:
        """Raise unless the object is present, well formed and hashes to its id (cached)."""
        file, _header = self.open_verified(oid, path)
        file.close()

    def verify(self, oid: str) -> None:
        """Re-hash an object and validate its header, whatever was checked before (fsck)."""
        file, _header = self.open_object(oid)
        with file:
            self._check_digest(file, oid)

    @staticmethod
    def _check_digest(file: BinaryIO, oid: str) -> None:
        digest = file_sha256(file)
        if digest != oid:
            raise ObjectCorruptError(oid, digest)
        VERIFIED.add(file)

    def quarantine(self, oid: str) -> Path:
        """Move a corrupt object to ``theta/bad/<oid>``, out of the way of a fetch that restores it.

        Every write keeps an object that is already present, so a corrupt one
        would otherwise stay forever; its bytes are kept for inspection.
        """
        bad_dir = self.theta_dir / "bad"
        bad_dir.mkdir(parents=True, exist_ok=True)
        target = bad_dir / oid
        os.replace(self.object_path(oid), target)
        return target

    # -- importing -------------------------------------------------------------
    def import_verified(self, path: Path, oid: str) -> None:
        """Move a file from ``tmp_dir`` into the store as ``oid``;
        the caller has checked its sha256.

        Like every write, it keeps an existing good object and replaces a
        damaged one (see :meth:`_place`). ``path`` is gone afterwards.
        """
        try:
            if self._fsync:
                with open(path, "rb") as file:
                    os.fsync(file.fileno())
            self._place(path, oid)
        finally:
            path.unlink(missing_ok=True)
