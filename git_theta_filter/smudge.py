"""Smudge: a manifest in, the original file's exact bytes out.

Before the first byte is sent, every object is checked to exist with the
payload length the manifest expects, so a missing object fails cleanly. While
streaming, the output is hashed; a size or sha256 that differs from the
manifest's is an error, never a silently wrong file: that whole-file check is
what verifies every byte handed out, so objects are not hashed one by one.
Objects in packs, checked before the first byte, stay open for the write
instead of being looked up again. :func:`write_atomically`
puts a rebuilt file in the work tree whole or not at all.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ThetaError
from .formats.layout import read_skeleton, write_spliced
from .formats.source import Readable
from .lfs_pointer import LfsObjectMissingError, LfsPointer, LfsStorage, parse_lfs_pointer
from .manifest import MAX_MANIFEST_BYTES, Manifest, ManifestError, looks_like_manifest
from .repo_files import replaced_whole
from .store.encoded import StoredObject
from .store.local import LocalStore, on_refused_write
from .store.object_format import ObjectFormatError

__all__ = [
    "ManifestTooLargeError",
    "SmudgeVerificationError",
    "SmudgePlan",
    "read_smudge_input",
    "prepare_smudge",
    "WorkTreeWriteError",
    "write_atomically",
]

Write = Callable[[memoryview], object]
Chunk = bytes | bytearray | memoryview
_READ_CHUNK = 1 << 20
# The output thread's batches (see _HashingOutput): their size, and how many may wait.
_BATCH = 1 << 20
_BATCHES_WAITING = 4
# Checked pack entries kept open between the check and the write: under 2 KB each
# (measured), so a manifest of any size costs at most about 20 MB for them.
_MAX_KEPT_OPEN = 10_000


class ManifestTooLargeError(ManifestError):
    """A blob that starts like a manifest but is larger than any manifest may be."""

    def __init__(self, path: str) -> None:
        super().__init__(f"starts like a manifest but is over the {MAX_MANIFEST_BYTES}-byte limit")
        self.path = path


def read_smudge_input(content: Readable, path: str) -> bytes:
    """The blob git sent, whole: a manifest, or a file committed before it was tracked.

    A blob that starts like a manifest is refused as soon as it passes the
    manifest size limit, so a hostile one is never buffered whole (the caller
    drains the rest). Other content passes through, so it is read whole.
    """
    data = bytearray()
    buffer = bytearray(_READ_CHUNK)
    while count := content.readinto(buffer):
        data += memoryview(buffer)[:count]
        if len(data) > MAX_MANIFEST_BYTES and looks_like_manifest(data):
            raise ManifestTooLargeError(path)
    return bytes(data)


class SmudgeVerificationError(ThetaError):
    """The rebuilt file does not match the manifest's size or sha256."""

    def __init__(self, path: str, expected: str, got: str) -> None:
        super().__init__(
            f"{path}: rebuilt file hashes to {got}, the manifest says {expected}; "
            "an object is corrupt",
            hint="run `git theta fsck` to find it, then `git theta fetch` to restore it",
        )
        self.path = path
        self.expected = expected
        self.got = got


@dataclass
class SmudgePlan:
    """A checked manifest, ready to be streamed out (or raw content to pass through,
    or a git-lfs object to copy out in place of its pointer).
    """

    path: str
    store: LocalStore
    manifest: Manifest | None
    passthrough: bytes = b""
    skeleton: bytes = b""
    lfs_object: tuple[LfsStorage, LfsPointer] | None = None
    opened: dict[str, StoredObject] = field(default_factory=dict)

    def write(self, write: Write) -> None:
        if self.lfs_object is not None:
            lfs, pointer = self.lfs_object
            lfs.copy_verified(pointer, self.path, write)
            return
        if self.manifest is None:
            write(memoryview(self.passthrough))
            return
        output = _HashingOutput(write)
        try:
            write_spliced(
                self.skeleton,
                self.manifest.splices,
                self.store,
                output,
                self.path,
                self.opened,
                give=output.give,
            )
        except BaseException:
            output.close(raise_error=False)  # the error that stopped the file is the one to report
            raise
        finally:
            for stored in self.opened.values():
                stored.close()
            self.opened.clear()
        output.close()
        got = output.digest.hexdigest()
        if output.written != self.manifest.size or got != self.manifest.sha256:
            raise SmudgeVerificationError(self.path, self.manifest.sha256, got)


class _HashingOutput:
    """Hashes and writes the bytes it is called with, in order, on two threads of its own.

    The rebuilt file is produced on the calling thread (objects decoded, with
    workers for large ones) while one thread hashes what came before and
    another sends what was hashed before that: sha256 and the pipe to git
    release the GIL, so a batch is hashed while the one before it is written.
    Borrowed bytes (:meth:`__call__`) are copied into batches of about a
    megabyte, so a caller may reuse its buffers, and thousands of small
    objects cost a few hand-overs; bytes given away (:meth:`give`) are handed
    over as they are. At most a few batches wait at each stage, bounding
    memory. An error of either thread is raised on the calling thread, at the
    next call or at :meth:`close`.
    """

    def __init__(self, write: Write) -> None:
        self._write = write
        self.digest = hashlib.sha256()
        self.written = 0
        self._batch = bytearray()
        self._to_hash: queue.Queue[Chunk | None] = queue.Queue(maxsize=_BATCHES_WAITING)
        self._to_write: queue.Queue[Chunk | None] = queue.Queue(maxsize=_BATCHES_WAITING)
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._hash_batches, name="theta-smudge-hash", daemon=True),
            threading.Thread(target=self._write_batches, name="theta-smudge-out", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def __call__(self, chunk: Chunk) -> None:
        """Hash and write ``chunk``, which the caller may change once this returns."""
        self._raise_error()
        if len(chunk) >= _BATCH:
            # Copying a large borrowed chunk costs more than hashing and writing it
            # here, in order, once what was handed over before is out.
            self._hand_over()
            self._drain()
            self.digest.update(chunk)
            self.written += len(chunk)
            self._write(memoryview(chunk))
            return
        self._batch += chunk
        if len(self._batch) >= _BATCH:
            self._hand_over()

    def give(self, chunk: Chunk) -> None:
        """Hash and write ``chunk``, which nothing changes afterwards (a freshly decoded
        block, a run of small objects): it is handed over without a copy."""
        self._raise_error()
        if len(chunk) < _BATCH // 2:
            self(chunk)
            return
        self._hand_over()
        self._to_hash.put(chunk)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _hand_over(self) -> None:
        if self._batch:
            self._to_hash.put(self._batch)
            self._batch = bytearray()

    def _drain(self) -> None:
        """Wait until everything handed over is hashed and written."""
        self._to_hash.join()
        self._to_write.join()
        self._raise_error()

    def _hash_batches(self) -> None:
        while True:
            batch = self._to_hash.get()
            try:
                if batch is not None and self._error is None:
                    self.digest.update(batch)
                    self.written += len(batch)
            except BaseException as exc:
                self._error = exc
            # After an error, batches still pass on, so that neither stage blocks the caller.
            self._to_write.put(batch)
            self._to_hash.task_done()
            if batch is None:
                return

    def _write_batches(self) -> None:
        while (batch := self._to_write.get()) is not None:
            try:
                if self._error is None:
                    self._write(memoryview(batch))
            except BaseException as exc:
                self._error = exc
            finally:
                self._to_write.task_done()
        self._to_write.task_done()

    def close(self, raise_error: bool = True) -> None:
        """Send the last batch and wait for the threads; raise their error, if any."""
        if self._threads[0].is_alive():
            self._hand_over()
            self._to_hash.put(None)
            for thread in self._threads:
                thread.join()
        if raise_error:
            self._raise_error()


def prepare_smudge(
    content: bytes, store: LocalStore, path: str, lfs: LfsStorage | None = None
) -> SmudgePlan:
    """Parse and check ``content``; raises before any output if the file cannot be rebuilt.

    Content that is not a manifest (a file committed before it was tracked)
    passes through unchanged, except a git-lfs pointer (a version committed
    while git-lfs tracked the file): given ``lfs``, the file comes from its
    local git-lfs object, checked against the pointer, and a missing object
    is an error rather than the pointer text written as the model.
    """
    if not looks_like_manifest(content):
        pointer = parse_lfs_pointer(content) if lfs is not None else None
        if pointer is not None and lfs is not None:
            if not lfs.has(pointer):
                raise LfsObjectMissingError(path, pointer.oid)
            return SmudgePlan(path, store, None, lfs_object=(lfs, pointer))
        return SmudgePlan(path, store, None, passthrough=content)
    manifest = Manifest.parse(content)
    lengths = {s.oid: s.length for s in manifest.splices}
    opened: dict[str, StoredObject] = {}
    # Thousands of small tensors: "no loose copy" comes from a listing, not a failed open each.
    with store.bulk_lookups():
        skeleton = read_skeleton(store, manifest, path)
        for stored in store.open_all_readable(lengths, path):
            oid = stored.oid
            if stored.header.nbytes != lengths[oid]:
                stored.close()
                raise ObjectFormatError(
                    oid,
                    f"payload is {stored.header.nbytes} bytes, the manifest of {path} says "
                    f"{lengths[oid]}",
                )
            # Pack entries stay open for the write (a file of thousands of small tensors
            # looked each one up twice); loose objects would each hold a file descriptor.
            if stored.owns_file or len(opened) >= _MAX_KEPT_OPEN:
                stored.close()
            else:
                opened[oid] = stored
    return SmudgePlan(path, store, manifest, skeleton=skeleton, opened=opened)


class WorkTreeWriteError(ThetaError):
    """The disk refused the rebuilt model file; the work-tree file is left as it was."""

    def __init__(self, path: str, error: OSError, retry: str) -> None:
        super().__init__(
            f"{path}: cannot write the rebuilt file: {error.strerror or error}",
            hint=f"free some disk space, then run `{retry}` again",
        )
        self.path = path
        self.errno = error.errno


def write_atomically(
    plan: SmudgePlan, target: Path, *, retry: str, mode: int | None = None
) -> None:
    """Stream the rebuilt file to a temporary file beside ``target``, then rename it into place.

    ``mode`` sets the file's permission bits (default: a new file's). A disk that
    refuses the write raises :class:`WorkTreeWriteError`, whose hint is to run
    ``retry`` again; ``target`` is then as it was, and no temporary file is left.
    """
    with on_refused_write(lambda exc: WorkTreeWriteError(plan.path, exc, retry)):
        target.parent.mkdir(parents=True, exist_ok=True)
        with replaced_whole(target, ".theta-write-") as temporary:
            with temporary.open("xb") as file:
                plan.write(file.write)
            if mode is not None:
                os.chmod(temporary, mode)
