"""The local object store: loose objects in ``theta/objects/aa/bb/<oid>``, packs in ``theta/packs``.

Layout and guarantees are specified in ``docs/store.md``:

* an object's id is the sha256 of its canonical bytes (64 lowercase hex
  digits), however it is stored: canonical, or encoded (``encoded.py``),
  loose or in a pack (``pack.py``); every read decodes and verifies;
* objects and packs are written to ``theta/tmp`` first and then hard-linked
  into place, so a reader never sees a partial object and an existing object
  is never rewritten (two writers of the same object both succeed);
* objects and packs are read-only files.

Durability: object files are not fsync'ed, like Git's own loose objects by
default (``core.fsync``). A crash can at worst leave an object that fails its
hash; ``git theta fsck`` finds it and the whole-file sha256 check on smudge
refuses to produce a wrong file from it. Set ``GIT_THETA_FSYNC=1`` to fsync
each object before it is linked into place.
"""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import os
import shutil
import stat
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

from ..errors import ThetaError
from . import fileio
from .encoded import ObjectReader, SmallObjectOutlook, StoredObject, encode_whole, is_small
from .integrity import VERIFIED, ObjectCorruptError, file_sha256
from .loose_listing import LooseListing
from .object_format import ObjectFormatError, ObjectHeader, encode_header, is_valid_oid
from .pack import (
    CorruptPackEntryError,
    ObjectNotInPackError,
    PackError,
    PackIndex,
    PackWriter,
    open_pack_file,
    pack_paths,
)
from .writing import (
    COPY_CHUNK,
    ExpectedObject,
    ObjectWriter,
    UnsizedObjectWriter,
    object_header_for,
)

__all__ = [
    "LocalStore",
    "StoreSettings",
    "DEFAULT_MAX_DELTA_DEPTH",
    "ObjectWriter",
    "UnsizedObjectWriter",
    "ObjectMissingError",
    "StoreWriteError",
    "LOCAL_WRITE_ERRNOS",
    "on_refused_write",
    "COPY_CHUNK",
]

DEFAULT_MAX_DELTA_DEPTH = 10


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


@contextmanager
def on_refused_write(make_error: Callable[[OSError], ThetaError]) -> Iterator[None]:
    """Within the block, an OSError that only writing causes (:data:`LOCAL_WRITE_ERRNOS`)
    becomes ``make_error(exc)``, a named error; any other passes through unchanged.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno in LOCAL_WRITE_ERRNOS:
            raise make_error(exc) from exc
        raise


@dataclass(frozen=True)
class StoreSettings:
    """How new objects are stored (docs/store.md).

    Set by ``theta.compression`` and ``theta.maxDeltaDepth``.
    """

    compression: bool = True
    max_delta_depth: int = DEFAULT_MAX_DELTA_DEPTH


def _subdirectories(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return sorted(entry for entry in path.iterdir() if entry.is_dir() and not entry.is_symlink())


class LocalStore:
    """Objects under ``<theta_dir>/objects`` and ``<theta_dir>/packs``; temp files in ``tmp``.

    ``settings`` gives the write settings (``theta.compression``,
    ``theta.maxDeltaDepth``) when the first object is written, so a store
    that is only read never asks for them.
    """

    def __init__(
        self, theta_dir: Path, settings: Callable[[], StoreSettings] | None = None
    ) -> None:
        self.theta_dir = Path(theta_dir)
        self.objects_dir = self.theta_dir / "objects"
        self._objects_root = os.fspath(self.objects_dir)
        self.packs_dir = self.theta_dir / "packs"
        self.tmp_dir = self.theta_dir / "tmp"
        self._settings_source = settings
        self._settings: StoreSettings | None = None
        # The filter reads the settings (a git process) on a thread beside a large clean,
        # which may need them meanwhile: it waits for that read rather than run another.
        self._settings_lock = threading.Lock()
        self._fsync = os.environ.get("GIT_THETA_FSYNC") == "1"
        # Header bytes -> ids of objects with that header, in file order; tensor name ->
        # its object and that object's header; ids a name has claimed (see expecting()).
        self._expected: dict[bytes, deque[str]] = {}
        self._expected_by_name: dict[str, tuple[str, bytes]] = {}
        self._claimed: set[str] = set()
        # Each large expected object's successor among the large ones, in file order, and
        # the one prepared ahead (_prepare_ahead).
        self._expected_next: dict[str, str] = {}
        self._prefetched: ExpectedObject | None = None
        # Packs in place: index and an open file each, loaded on the first lookup.
        self._packs: dict[Path, tuple[PackIndex, int]] = {}
        self._broken_packs: dict[Path, PackError] = {}
        self._packs_seen: tuple[int, int] | None = None  # the packs dir's (mtime, size)
        self._packing = False  # inside packing(): small objects go to _pack_writer
        self._loose_listing: LooseListing | None = None  # inside bulk_lookups()
        self._pack_writer: PackWriter | None = None  # created for the first small object
        # Within packing(): which small objects are worth a compression attempt.
        self._small_outlook: SmallObjectOutlook | None = None

    @property
    def settings(self) -> StoreSettings:
        if self._settings is None:
            with self._settings_lock:
                if self._settings is None:
                    source = self._settings_source
                    self._settings = source() if source is not None else StoreSettings()
        return self._settings

    @property
    def compression(self) -> bool:
        return self.settings.compression

    @property
    def max_delta_depth(self) -> int:
        return self.settings.max_delta_depth if self.settings.compression else 0

    def object_path(self, oid: str) -> Path:
        """Where ``oid``'s loose object is (or would be)."""
        return Path(self._loose_path(oid))

    def _loose_path(self, oid: str) -> str:
        """:meth:`object_path` as a string: a clean or a checkout of thousands of small
        tensors looks up each, and a Path costs more than the failed open() that
        usually follows."""
        if not is_valid_oid(oid):
            # Manifests are parsed strictly, but this is the last line of
            # defence against an oid like "../../etc/passwd".
            raise ThetaError(f"invalid object id {oid!r}")
        return f"{self._objects_root}/{oid[0:2]}/{oid[2:4]}/{oid}"

    def has(self, oid: str, look_for_new: bool = True) -> bool:
        """Whether ``oid`` is here, loose or packed.

        Without ``look_for_new``, neither packs nor (within :meth:`bulk_lookups`)
        loose objects that other processes stored since this one last looked are
        looked for: a caller about to store the object pays for missing one with a
        second copy, which repack drops, rather than a system call per object.
        """
        path = self._loose_path(oid)
        listed_absent = self._listed_absent(oid)
        if not listed_absent and os.path.isfile(path):
            return True
        if self._find_packed(oid, look_for_new_packs=look_for_new) is not None:
            return True
        return look_for_new and listed_absent and os.path.isfile(path)

    @contextmanager
    def bulk_lookups(self) -> Iterator[None]:
        """Within the block, a lookup learns that an object has no loose copy from one
        listing of each fan-out directory (:class:`.LooseListing`), not from a failed
        ``open()`` each; what that may miss is in docs/store.md ("Lookups within one
        operation"). For operations that look up thousands of objects: a smudge's
        checks, a clean's :meth:`packing` block.
        """
        if self._loose_listing is not None:  # nested: the outer block's listing serves
            yield
            return
        self._loose_listing = LooseListing(self._objects_root)
        try:
            yield
        finally:
            self._loose_listing = None

    def _listed_absent(self, oid: str) -> bool:
        """Whether, within :meth:`bulk_lookups`, the listing shows no loose copy of ``oid``."""
        listing = self._loose_listing
        return listing is not None and not listing.may_hold(oid)

    def size(self, oid: str) -> int | None:
        """Bytes the object takes in the store (its encoded size), or None if absent."""
        try:
            return self.object_path(oid).stat().st_size
        except FileNotFoundError:
            found = self._find_packed(oid)
            return None if found is None else found[2]

    def iter_oids(self) -> Iterator[str]:
        """Every object id present in the store, loose or packed, once each (no content check)."""
        return iter(sorted(set(self.iter_loose_oids()) | set(self.packed_oids())))

    def iter_loose_oids(self) -> Iterator[str]:
        # Anything else that lands in objects/ (an editor's backup, .DS_Store) is skipped.
        for first in _subdirectories(self.objects_dir):
            for second in _subdirectories(first):
                for name in sorted(os.listdir(second)):
                    if is_valid_oid(name) and name[0:2] == first.name and name[2:4] == second.name:
                        yield name

    # -- packs -----------------------------------------------------------------
    def packs(self) -> dict[Path, PackIndex]:
        """The packs in place, with their indexes; broken ones are in :meth:`broken_packs`."""
        self._refresh_packs(force=True)
        return {path: index for path, (index, _fd) in self._packs.items()}

    def broken_packs(self) -> dict[Path, PackError]:
        self._refresh_packs(force=True)
        return dict(self._broken_packs)

    def packed_oids(self) -> set[str]:
        return {oid for index in self.packs().values() for oid, _, _ in index.entries()}

    def _refresh_packs(self, force: bool = False) -> bool:
        """Load indexes of packs that appeared since the last look; True if any did."""
        try:
            info = os.stat(self.packs_dir)
            seen = (info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            seen = (0, 0)
        if seen == self._packs_seen and not force:
            return False
        self._packs_seen = seen
        changed = False
        present = set(pack_paths(self.packs_dir))
        for gone in [path for path in self._packs if path not in present]:
            # Repacked away; an open reader keeps its file, new lookups skip it.
            del self._packs[gone]
        for path in sorted(present - set(self._packs) - set(self._broken_packs)):
            try:
                index = PackIndex(path)
                fd = open_pack_file(path)
            except PackError as exc:
                self._broken_packs[path] = exc
                continue
            except FileNotFoundError:
                continue
            self._packs[path] = (index, fd)
            changed = True
        return changed

    def _find_packed(
        self, oid: str, look_for_new_packs: bool = True
    ) -> tuple[int, int, int, Path] | None:
        """(file, offset, length, pack) of a packed copy of ``oid``, or None.

        A miss looks again for packs that appeared since the last look (a stat
        of the packs directory), unless ``look_for_new_packs`` is False.
        """
        writer = self._pack_writer
        if writer is not None and (entry := writer.find(oid)) is not None:
            return writer.fd, entry[0], entry[1], self.tmp_dir
        if self._packs_seen is None:
            self._refresh_packs()
        for _attempt in range(2):
            for path, (index, fd) in self._packs.items():
                if (entry := index.find(oid)) is not None:
                    return fd, entry[0], entry[1], path
            if not look_for_new_packs or not self._refresh_packs():
                return None
        return None

    @contextmanager
    def packing(self) -> Iterator[None]:
        """Within the block, small new objects go into one pack, in place when the block ends.

        One clean of a file with thousands of small tensors then writes two
        files, not thousands. If the block raises, the pack is discarded.
        """
        if self._packing:  # nested: the outer block finishes the pack
            yield
            return
        self._packing = True
        self._small_outlook = SmallObjectOutlook()
        try:
            with self.bulk_lookups():
                yield
            writer, self._pack_writer = self._pack_writer, None
            if writer is not None and writer.finish(self.packs_dir) is not None:
                self._refresh_packs(force=True)
        finally:
            self._packing = False
            self._small_outlook = None
            if self._pack_writer is not None:
                self._pack_writer.abort()
                self._pack_writer = None

    # -- writing -------------------------------------------------------------
    def writer(
        self, dtype: str, shape: tuple[int, ...], nbytes: int, names: Sequence[str] = ()
    ) -> ObjectWriter:
        """A writer for one object; ``names`` are the tensors whose storage it is, which
        pick its previous version within :meth:`expecting`."""
        return ObjectWriter(self, dtype, shape, nbytes, names)

    @contextmanager
    def expecting(
        self, oids: Iterable[str], by_name: Mapping[str, str] | None = None
    ) -> Iterator[None]:
        """Within the block, new objects are first compared with these existing ones.

        ``oids`` are the payload objects of the file's previous version, in
        file order, and ``by_name`` maps its tensor names to their objects. A
        new object takes the object of a tensor of its own name when that has
        its header; otherwise the next one in file order that has its header
        and no tensor of the new version has claimed by name. So a tensor
        added, removed or moved leaves every other one paired with its own
        previous version. If the payloads are equal the new object *is* that
        object: neither hashed nor written again. A fine-tune that changes a
        tenth of the tensors then costs a read of the unchanged ones instead
        of a sha256 and a write; a tensor that changed is stored as a delta
        against it. Like :meth:`_link_temp` finding an object already
        present, this trusts an object to hash to its name; ``git theta
        fsck`` checks that.
        """
        expected: dict[bytes, deque[str]] = {}
        headers: dict[str, bytes | None] = {}
        large: list[str] = []  # in file order: those compared as they stream in
        for oid in oids:
            if oid not in headers:
                header, payload_bytes = self._read_raw_header(oid)
                headers[oid] = header
                if header is not None and not is_small(len(header) + payload_bytes):
                    large.append(oid)
            if (header := headers[oid]) is not None:
                expected.setdefault(header, deque()).append(oid)
        named = {
            name: (oid, header)
            for name, oid in (by_name or {}).items()
            if (header := headers.get(oid)) is not None
        }
        self._expected, self._expected_by_name, self._claimed = expected, named, set()
        self._expected_next = dict(itertools.pairwise(large))
        try:
            yield
        finally:
            self._expected, self._expected_by_name, self._claimed = {}, {}, set()
            self._expected_next = {}
            if self._prefetched is not None:
                self._prefetched.close()
                self._prefetched = None

    def _read_raw_header(self, oid: str) -> tuple[bytes | None, int]:
        """An object's canonical header bytes and payload size; (None, 0) if it is missing
        or not valid."""
        try:
            stored = self.open_stored(oid)
        except ThetaError:
            return None, 0
        if stored is None:
            return None, 0
        stored.close()
        return stored.canonical_header, stored.header.nbytes

    def _take_expected(self, header: bytes, names: Sequence[str] = ()) -> ExpectedObject | None:
        """The expected object for a payload with this header, ready to be compared: a
        tensor named in ``names``, else the next unclaimed one (see :meth:`expecting`)."""
        expected = self._find_expected(header, names)
        if expected is not None:
            self._prepare_ahead(expected.oid)
        return expected

    def _find_expected(self, header: bytes, names: Sequence[str]) -> ExpectedObject | None:
        for name in names:
            oid, named_header = self._expected_by_name.get(name, (None, None))
            if oid is not None and named_header == header:
                self._claimed.add(oid)
                if (expected := self._open_expected(oid)) is not None:
                    return expected
        queue = self._expected.get(header)
        while queue:
            oid = queue.popleft()
            if oid not in self._claimed and (expected := self._open_expected(oid)) is not None:
                return expected
        return None

    def _prepare_ahead(self, oid: str) -> None:
        """Open the large object after ``oid`` (itself large) in file order and start the
        work its first comparison waits for (:meth:`ExpectedObject.prepare`): the next
        large tensor most often takes it, and without digests its comparison waits for
        its first block's decoding before this thread reads on. Small objects are
        compared on this thread, all at once, and are never prepared ahead."""
        following = self._expected_next.get(oid)
        if following is None or following in self._claimed:
            return
        if self._prefetched is not None:
            if self._prefetched.oid == following:
                return
            self._prefetched.close()
            self._prefetched = None
        expected = self._open_expected(following)
        if expected is None:
            return
        expected.prepare()
        self._prefetched = expected

    def _open_expected(self, oid: str) -> ExpectedObject | None:
        prefetched = self._prefetched
        if prefetched is not None and prefetched.oid == oid:
            self._prefetched = None
            return prefetched
        try:
            stored = self.open_stored(oid)
        except (OSError, ThetaError):
            return None
        return ExpectedObject(stored) if stored is not None else None

    def write_small(
        self, dtype: str, shape: tuple[int, ...], payload: bytes | bytearray | memoryview
    ) -> str | None:
        """Store a small object whose whole payload is in memory, as :meth:`writer` would,
        and return its id; None, with nothing done, when it is not small or when new
        objects are compared with expected ones (:meth:`expecting`): use a writer then.

        A clean of thousands of small tensors stores each so, without a writer's
        streaming, comparing and temp-file machinery per object.
        """
        if self._expected or self._expected_by_name:
            return None
        nbytes = len(payload)
        header = encode_header(dtype, shape, nbytes)
        if not is_small(len(header) + nbytes):
            return None
        digest = hashlib.sha256(header)
        digest.update(payload)
        oid = digest.hexdigest()
        # A copy: the caller's buffer is reused, and the pack's thread encodes it later.
        object_header = object_header_for(dtype, shape, header, nbytes)
        self._add_small(oid, header, object_header, bytes(payload))
        return oid

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

    def _add_small(
        self,
        oid: str,
        canonical_header: bytes,
        header: ObjectHeader,
        payload: bytes | bytearray,
    ) -> None:
        """Store a small object from memory: into the pack being written, or loose.
        ``payload`` is the caller's no more: the pack's thread may encode it later."""
        damaged = False
        # Objects another process stored since this one last looked are not looked
        # for: missing one costs a second copy of a small object, which repack drops,
        # while looking costs a system call per object of a file with thousands of them.
        if self.has(oid, look_for_new=False):
            if self._holds(oid):  # small: decoding it costs little
                self.freshen(oid)
                return
            damaged = True  # the good copy goes loose below, where lookups look first
        packed = self._packing and not damaged
        if self.compression:
            # The pack's thread encodes its objects one by one, in order: the outlook it
            # keeps is the same whatever this thread does meanwhile.
            outlook = self._small_outlook if packed else None
            make_stored = partial(encode_whole, oid, canonical_header, header, payload, outlook)
        else:
            make_stored = partial(bytes.__add__, canonical_header, payload)
        if packed:
            if self._pack_writer is None:
                self._pack_writer = PackWriter(self.tmp_dir, self._fsync)
            # Encoded and appended on the pack's own thread, while this one parses on.
            self._pack_writer.add_later(oid, make_stored, len(payload))
            return
        stored = make_stored()
        file, tmp_path = self._open_temp()
        try:
            fileio.write_all(file, stored)
        except BaseException:
            self._discard_temp(file, tmp_path)
            raise
        self._link_temp(file, tmp_path, oid)

    def _open_temp(self) -> tuple[io.FileIO, Path]:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix=f"{os.getpid()}-", suffix=".tmp")
        # Unbuffered: payloads arrive in large chunks, and a buffer would copy them once more.
        return os.fdopen(fd, "w+b", buffering=0), Path(name)

    def _discard_temp(self, file: BinaryIO, tmp_path: Path) -> None:
        file.close()
        tmp_path.unlink(missing_ok=True)

    def writes(self, path: str | None = None) -> AbstractContextManager[None]:
        """Within the block, the disk refusing a write raises :class:`StoreWriteError`
        (naming the work-tree file ``path``, if given).
        """
        return on_refused_write(lambda exc: StoreWriteError(self.theta_dir, exc, path))

    def _link_temp(self, file: BinaryIO, tmp_path: Path, oid: str) -> str:
        try:
            if self._fsync:
                os.fsync(file.fileno())
            file.close()
            self._link_into_place(tmp_path, oid)
        finally:
            self._discard_temp(file, tmp_path)
        return oid

    def _link_into_place(self, path: Path, oid: str) -> None:
        """Make ``path`` the loose object ``oid``: read-only, linked, never replacing one."""
        os.chmod(path, 0o444)
        final = self.object_path(oid)
        final.parent.mkdir(parents=True, exist_ok=True)
        if self._loose_listing is not None:
            self._loose_listing.linked(oid)  # from here on, lookups open the loose path
        try:
            # link() never replaces an existing file: a concurrent writer of
            # the same object, or an existing object, wins and stays as is.
            os.link(path, final)
        except FileExistsError:
            if self._holds(oid):
                self.freshen(oid)
                return
            # A damaged copy: kept for inspection, and the good bytes renamed over it
            # in one step, so that the store gives back what was just written.
            self._keep_for_inspection(final, oid)
            os.replace(path, final)
        VERIFIED.add_path(final)

    def freshen(self, oid: str) -> None:
        """Touch the file holding ``oid``: its loose file, else its pack.

        An add that needs an object already stored counts as writing it, as
        git freshens an object it would have written, so ``git theta gc``'s
        grace period counts from this add. Only the modification time
        changes, never the content. A store that may not be touched (another
        user's, a read-only mount) is left as it is: it still serves reads.
        """
        if not self._listed_absent(oid):
            try:
                os.utime(self._loose_path(oid), follow_symlinks=False)
                return
            except FileNotFoundError:
                pass
            except OSError:
                return
        found = self._find_packed(oid)
        if found is not None and found[3] != self.tmp_dir:  # not the pack being written
            with suppress(OSError):
                os.utime(found[3], follow_symlinks=False)

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
    def open_stored(self, oid: str) -> StoredObject | None:
        """The stored object ``oid`` (loose first, then packed), or None if there is none.

        Its headers are checked; its blocks are decoded (and a delta's base
        opened) only as they are read. The caller closes it.
        """
        where = self._locate(oid)
        if where is None:
            return None
        if isinstance(where, int):
            return self._loose_stored(oid, where)
        return self._packed_stored(oid, where)

    def _locate(self, oid: str) -> int | tuple[int, int, int, Path] | None:
        """Where ``oid`` is stored, in lookup order (docs/store.md, "Packs" rule 4): a
        descriptor of its loose file, else its packed copy (:meth:`_find_packed`), else
        None."""
        listed_absent = self._listed_absent(oid)
        if not listed_absent and (fd := self._open_loose(oid)) is not None:
            return fd
        found = self._find_packed(oid)
        if found is not None:
            return found
        # Within bulk_lookups(), stored loose by another process since the listing.
        return self._open_loose(oid) if listed_absent else None

    def _loose_stored(self, oid: str, fd: int) -> StoredObject:
        return StoredObject(oid, fd, 0, os.fstat(fd).st_size, self.open_stored, owns_fd=True)

    def _packed_stored(self, oid: str, found: tuple[int, int, int, Path]) -> StoredObject:
        fd, offset, length, pack = found
        try:
            return StoredObject(oid, fd, offset, length, self.open_stored)
        except ObjectFormatError as exc:
            raise CorruptPackEntryError(oid, pack, exc.reason) from None

    def _open_loose(self, oid: str) -> int | None:
        """A read-only descriptor of the loose object, or None if there is none.

        A symbolic link is never followed, and anything but a regular file
        (a FIFO that would block, a device) is refused.
        """
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self._loose_path(oid), flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ObjectFormatError(oid, "is a symbolic link") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ObjectFormatError(oid, "is not a regular file")
        os.set_blocking(fd, True)
        return fd

    def open_object(
        self, oid: str, path: str | None = None, *, verify: bool = True
    ) -> tuple[io.RawIOBase, ObjectHeader]:
        """Open an object's canonical bytes positioned at its payload, after checking its header.

        ``path`` is the work-tree file that needs the object, for the error
        message. An encoded object is decoded as it is read, and with
        ``verify`` its sha256 is checked once every byte has been read in
        order; a caller that checks a hash over the bytes itself (smudge)
        passes False. A loose canonical object is the file itself.
        """
        stored = self.open_stored(oid)
        if stored is None:
            raise ObjectMissingError(oid, path)
        fd = stored.loose_canonical_fd()
        if fd is None:
            return ObjectReader(stored, verify=verify), stored.header
        # A loose canonical object is read as the plain file: nothing to decode.
        file = os.fdopen(fd, "rb", buffering=0)
        file.seek(stored.header.data_offset)
        return file, stored.header

    def check_readable(self, oid: str, path: str | None = None) -> ObjectHeader:
        """The object's header, after checking that it and every delta base it needs are here.

        Headers only: nothing is decoded. Raises :class:`ObjectMissingError`,
        or an :class:`ObjectFormatError` (a missing or unusable delta base
        among them) naming the object.
        """
        with self.open_readable(oid, path) as stored:
            return stored.header

    def open_readable(self, oid: str, path: str | None = None) -> StoredObject:
        """The stored object, checked as :meth:`check_readable` says; the caller closes it.

        The bases the check opened are closed again, so only a loose object
        holds a file descriptor.
        """
        stored = self.open_stored(oid)
        if stored is None:
            raise ObjectMissingError(oid, path)
        return self._with_bases_checked(stored)

    @staticmethod
    def _with_bases_checked(stored: StoredObject) -> StoredObject:
        """``stored``, once every delta base down its chain opened and checked; those
        are closed again. Closes ``stored`` if one fails."""
        try:
            link = stored
            while link.base_oid is not None:
                link = link.base()
        except BaseException:
            stored.close()
            raise
        if stored.base_oid is not None:
            stored.drop_bases()
        return stored

    def open_all_readable(
        self, oids: Iterable[str], path: str | None = None
    ) -> Iterator[StoredObject]:
        """Each of ``oids`` (once), opened and checked as :meth:`open_readable` does: loose
        ones as they are found, in id order, then the entries of each pack in file order
        (one pass forward through the pack, which read-ahead serves when it is not
        cached, where id order jumped about it). The caller closes each.
        """
        by_pack: dict[Path, list[tuple[int, str, tuple[int, int, int, Path]]]] = {}
        for oid in sorted(set(oids)):
            where = self._locate(oid)
            if where is None:
                raise ObjectMissingError(oid, path)
            if isinstance(where, int):
                yield self._with_bases_checked(self._loose_stored(oid, where))
            else:
                by_pack.setdefault(where[3], []).append((where[1], oid, where))
        for entries in by_pack.values():
            for _offset, oid, found in sorted(entries):
                yield self._with_bases_checked(self._packed_stored(oid, found))

    def canonical_size(self, oid: str) -> int | None:
        """Bytes of the object's canonical form, or None if it is not here."""
        try:
            stored = self.open_stored(oid)
        except ThetaError:
            return self.size(oid)
        if stored is None:
            return None
        stored.close()
        return stored.header.data_offset + stored.header.nbytes

    def open_verified(self, oid: str, path: str | None = None) -> tuple[io.RawIOBase, ObjectHeader]:
        """:meth:`open_object`, once the object's bytes are known to hash to its id.

        Every reader that hands out an object's bytes or builds on them uses
        this. A loose canonical file is hashed on first use in this process,
        and again after any change to it (see :mod:`.integrity`); an encoded
        or packed object is decoded and hashed completely first. Raises
        :class:`~.integrity.ObjectCorruptError` for bytes that do not match.
        """
        file, header = self.open_object(oid, path)
        try:
            if isinstance(file, ObjectReader):
                file.seek(0)
                while file.read(COPY_CHUNK):
                    pass  # the reader checks the sha256 at the end
            elif not VERIFIED.knows(file):
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
        """Decode an object completely and check its sha256, whatever was checked before (fsck)."""
        file, _header = self.open_object(oid)
        with file:
            file.seek(0)
            if isinstance(file, ObjectReader):
                while file.read(COPY_CHUNK):
                    pass  # the reader checks the sha256 at the end
                return
            self._check_digest(file, oid)

    @staticmethod
    def _check_digest(file: io.RawIOBase, oid: str) -> None:
        digest = file_sha256(file)
        if digest != oid:
            raise ObjectCorruptError(oid, digest)
        VERIFIED.add(file)

    def _holds(self, oid: str) -> bool:
        """Whether the stored object ``oid`` is present and decodes to its id."""
        try:
            self.verify(oid)
        except (OSError, ThetaError):
            return False
        return True

    def verify_packed(self, pack: Path, oid: str) -> None:
        """Decode ``oid``'s entry in ``pack`` completely and check its sha256.

        Raises :class:`~.pack.ObjectNotInPackError` when the pack's index does not list
        ``oid``, whether or not the store holds it elsewhere.
        """
        index = self._packs[pack][0] if pack in self._packs else PackIndex(pack)
        entry = index.find(oid)
        if entry is None:
            raise ObjectNotInPackError(oid, pack)
        fd = os.open(pack, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            stored = StoredObject(oid, fd, entry[0], entry[1], self.open_stored, owns_fd=True)
        except ObjectFormatError as exc:
            raise CorruptPackEntryError(oid, pack, exc.reason) from None
        with ObjectReader(stored) as reader:
            reader.seek(0)
            try:
                while reader.read(COPY_CHUNK):
                    pass  # the reader checks the sha256 at the end
            except ObjectFormatError as exc:
                raise CorruptPackEntryError(oid, pack, exc.reason) from None

    @contextmanager
    def canonical_file(self, oid: str) -> Iterator[Path]:
        """A file holding ``oid``'s canonical bytes, for uploaders that send a file.

        A loose canonical object is handed out as it is (read-only; do not
        modify it); any other is decoded, and verified, into a temp file that
        is removed when the block ends. Raises :class:`ObjectMissingError`.
        """
        file, _header = self.open_object(oid)
        if not isinstance(file, ObjectReader):
            try:
                if not VERIFIED.knows(file):
                    self._check_digest(file, oid)
            finally:
                file.close()
            yield self.object_path(oid)
            return
        temp, temp_path = self._open_temp()
        try:
            with file:
                file.seek(0)
                shutil.copyfileobj(file, temp, COPY_CHUNK)
            temp.close()
            yield temp_path
        finally:
            self._discard_temp(temp, temp_path)

    def quarantine(self, oid: str) -> Path:
        """Move a corrupt object out of the way of a fetch that restores it: to ``theta/bad``.

        Every write keeps an object that is already present, so a corrupt one
        would otherwise stay forever; its bytes are kept for inspection. A
        packed object takes its whole pack along (packs are never rewritten);
        the pack's other objects are then fetched again like it.
        """
        loose = self.object_path(oid)
        if loose.exists() or loose.is_symlink():
            bad_dir = self.theta_dir / "bad"
            bad_dir.mkdir(parents=True, exist_ok=True)
            target = bad_dir / oid
            os.replace(loose, target)
            return target
        found = self._find_packed(oid)
        if found is None:
            raise ObjectMissingError(oid)
        return self.quarantine_pack(found[3])

    def quarantine_pack(self, pack: Path) -> Path:
        """Move a pack and its index to ``theta/bad``."""
        bad_dir = self.theta_dir / "bad"
        bad_dir.mkdir(parents=True, exist_ok=True)
        target = bad_dir / pack.name
        os.replace(pack.with_suffix(".idx"), target.with_suffix(".idx"))
        if pack.exists():
            os.replace(pack, target)
        self._packs.pop(pack, None)
        self._broken_packs.pop(pack, None)
        return target

    # -- importing -------------------------------------------------------------
    def import_verified(self, path: Path, oid: str) -> None:
        """Move a file from ``tmp_dir`` into the store as ``oid``;
        the caller has checked its sha256.

        Like every write, it never replaces an existing object. ``path`` is gone afterwards.
        """
        try:
            if self._fsync:
                with open(path, "rb") as file:
                    os.fsync(file.fileno())
            self._link_into_place(path, oid)
        finally:
            path.unlink(missing_ok=True)
