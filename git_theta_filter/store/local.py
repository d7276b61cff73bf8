"""The local object store: ``<git common dir>/theta/objects/aa/bb/<oid>``.

Layout and guarantees are specified in ``docs/store.md``:

* an object's id is the sha256 of its file's bytes (64 lowercase hex digits);
* objects are written to ``theta/tmp`` first and then hard-linked into place,
  so a reader never sees a partial object and an existing object is never
  rewritten (two writers of the same object both succeed);
* objects are read-only files.

Durability: object files are not fsync'ed, like Git's own loose objects by
default (``core.fsync``). A crash can at worst leave an object that fails its
hash; ``git theta fsck`` finds it and the whole-file sha256 check on smudge
refuses to produce a wrong file from it. Set ``GIT_THETA_FSYNC=1`` to fsync
each object before it is linked into place.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import ThetaError
from .object_format import ObjectFormatError, ObjectHeader, encode_header, read_header

__all__ = ["LocalStore", "ObjectWriter", "ObjectMissingError", "COPY_CHUNK", "is_valid_oid"]

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
            hint="run `git theta fetch` to download it, or set GIT_THETA_SKIP_SMUDGE=1 to check out the manifest instead",
        )
        self.oid = oid
        self.path = path


class ObjectWriter:
    """Streams one object with a known payload size into the store.

    The header goes first, so the object id is computed in the same pass that
    writes the payload; nothing is read back.
    """

    def __init__(self, store: "LocalStore", dtype: str, shape: tuple[int, ...], nbytes: int) -> None:
        self._store = store
        self._expected = nbytes
        self._written = 0
        header = encode_header(dtype, shape, nbytes)
        self._hash = hashlib.sha256(header)
        self._file, self._tmp_path = store._open_temp()
        self._file.write(header)
        self.oid: str | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self._file.write(data)
        self._written += len(data)

    def commit(self) -> str:
        if self._written != self._expected:
            self.abort()
            raise ThetaError(f"object payload was {self._written} bytes, expected {self._expected}")
        self.oid = self._store._link_temp(self._file, self._tmp_path, self._hash.hexdigest())
        return self.oid

    def abort(self) -> None:
        self._store._discard_temp(self._file, self._tmp_path)


class UnsizedObjectWriter:
    """Streams a U8 object whose length is known only at the end (opaque files).

    The payload goes to a temp file first; :meth:`commit` then writes the
    header and copies the payload behind it, hashing as it goes. This costs a
    second pass, which only files that are neither torch zips nor safetensors pay.
    """

    def __init__(self, store: "LocalStore") -> None:
        self._store = store
        self._file, self._tmp_path = store._open_temp()
        self._written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._file.write(data)
        self._written += len(data)

    def commit(self) -> str:
        self._file.flush()
        self._file.seek(0)
        try:
            final = ObjectWriter(self._store, "U8", (self._written,), self._written)
            buffer = bytearray(COPY_CHUNK)
            while count := self._file.readinto(buffer):
                final.write(memoryview(buffer)[:count])
            oid = final.commit()
        finally:
            self.abort()
        return oid

    def abort(self) -> None:
        self._store._discard_temp(self._file, self._tmp_path)


class LocalStore:
    """Objects under ``<theta_dir>/objects``; temp files under ``<theta_dir>/tmp``."""

    def __init__(self, theta_dir: Path) -> None:
        self.theta_dir = Path(theta_dir)
        self.objects_dir = self.theta_dir / "objects"
        self.tmp_dir = self.theta_dir / "tmp"
        self._fsync = os.environ.get("GIT_THETA_FSYNC") == "1"

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
        if not self.objects_dir.is_dir():
            return
        for first in sorted(os.listdir(self.objects_dir)):
            for second in sorted(os.listdir(self.objects_dir / first)):
                for name in sorted(os.listdir(self.objects_dir / first / second)):
                    if is_valid_oid(name) and name[0:2] == first and name[2:4] == second:
                        yield name

    # -- writing -------------------------------------------------------------
    def writer(self, dtype: str, shape: tuple[int, ...], nbytes: int) -> ObjectWriter:
        return ObjectWriter(self, dtype, shape, nbytes)

    def unsized_writer(self) -> UnsizedObjectWriter:
        return UnsizedObjectWriter(self)

    def write_bytes(self, data: bytes | bytearray, dtype: str = "U8", shape: tuple[int, ...] | None = None) -> str:
        writer = self.writer(dtype, (len(data),) if shape is None else shape, len(data))
        writer.write(data)
        return writer.commit()

    def _open_temp(self) -> tuple[BinaryIO, Path]:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix=f"{os.getpid()}-", suffix=".tmp")
        return os.fdopen(fd, "w+b", buffering=COPY_CHUNK), Path(name)

    def _discard_temp(self, file: BinaryIO, tmp_path: Path) -> None:
        file.close()
        tmp_path.unlink(missing_ok=True)

    def _link_temp(self, file: BinaryIO, tmp_path: Path, oid: str) -> str:
        try:
            file.flush()
            if self._fsync:
                os.fsync(file.fileno())
            file.close()
            os.chmod(tmp_path, 0o444)
            final = self.object_path(oid)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                # link() never replaces an existing file: a concurrent writer of
                # the same object, or an existing object, wins and stays as is.
                os.link(tmp_path, final)
            except FileExistsError:
                pass
        finally:
            self._discard_temp(file, tmp_path)
        return oid

    # -- reading -------------------------------------------------------------
    def open_object(self, oid: str, path: str | None = None) -> tuple[BinaryIO, ObjectHeader]:
        """Open an object positioned at its payload, after validating its header.

        ``path`` is the work-tree file that needs the object, for the error message.
        """
        object_path = self.object_path(oid)
        try:
            if object_path.is_symlink():
                raise ObjectFormatError(oid, "is a symbolic link")
            file = open(object_path, "rb", buffering=0)
        except FileNotFoundError:
            raise ObjectMissingError(oid, path) from None
        try:
            header = read_header(oid, file, os.fstat(file.fileno()).st_size)
        except BaseException:
            file.close()
            raise
        return file, header

    def verify(self, oid: str) -> None:
        """Re-hash an object and validate its header; raises on any problem."""
        file, _header = self.open_object(oid)
        with file:
            file.seek(0)
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        if digest != oid:
            raise ObjectFormatError(oid, f"content hashes to {digest}")

    # -- importing -------------------------------------------------------------
    def import_verified(self, path: Path, oid: str) -> None:
        """Move a file from ``tmp_dir`` into the store as ``oid``; the caller has checked its sha256.

        Like every write, it never replaces an existing object. ``path`` is gone afterwards.
        """
        try:
            if self._fsync:
                with open(path, "rb") as file:
                    os.fsync(file.fileno())
            os.chmod(path, 0o444)
            final = self.object_path(oid)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, final)
            except FileExistsError:
                pass
        finally:
            path.unlink(missing_ok=True)
