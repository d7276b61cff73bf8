"""Another repository's own store, for a remote that is a local path.

``git clone /path/to/repo`` (or a remote whose URL is such a path) shares
``<git dir>/theta`` with that repository. Its objects are laid out as that
repository's :class:`~.local.LocalStore` keeps them (docs/store.md): loose
files, canonical or encoded, and packs. A get decodes whichever form it finds
into the canonical bytes every other store holds; a put writes a canonical
loose file, as a directory store does, which that repository's store reads as
one of its own.

That repository, and so its store, may be another user's: its files are read
as a directory store's are, never through a symbolic link below ``theta/`` and
never anything but a regular file (``DirectoryStore._open_object``, and
:func:`~.pack.open_pack_file` for packs). A pack's index is checked as the local
store checks its own. Decoding is bounded: a delta chain whose blocks would
hold more than :data:`CHAIN_BUDGET` bytes at once is refused before a block is
decoded. Every object is verified by the transfer that asked for it, as any
download is.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

from .base import RemoteObjectMissingError, StoreError
from .directory import DirectoryStore
from .encoded import ObjectReader, StoredObject
from .local import COPY_CHUNK
from .object_format import ObjectFormatError
from .pack import PackError, PackIndex, open_pack_file, pack_paths
from .sink import ObjectSink

__all__ = ["RepositoryStore", "RepositoryObjectError", "RepositoryPackError", "CHAIN_BUDGET"]

# The most bytes of blocks that decoding one block of a delta chain may hold at once
# (each member of the chain decodes its own block). This encoder's chains hold at most
# 9 blocks of 1 MiB (skip deltas: a version at depth d decodes popcount(d) + 1 objects,
# and d is at most 255); the format would allow 255 blocks of 16 MiB, 4 GiB.
CHAIN_BUDGET = 32 << 20


class RepositoryObjectError(StoreError):
    """An object of another repository's store that cannot be read as it is stored."""

    def __init__(self, url: str, oid: str, reason: str, repository: Path) -> None:
        super().__init__(url, f"cannot be read: {reason}", oid=oid, hint=_fsck_hint(repository))


class RepositoryPackError(StoreError):
    """A pack of another repository's store that is not as docs/store.md specifies."""

    def __init__(self, url: str, error: PackError, repository: Path) -> None:
        super().__init__(
            url, f"pack {error.pack.name}: {error.reason}", hint=_fsck_hint(repository)
        )


def _fsck_hint(repository: Path) -> str:
    """What mends a damaged object of ``repository``'s store: its own fsck, then fetch."""
    return (
        f"run `git theta fsck` in {repository}, which moves the damaged copy aside, "
        "then `git theta fetch` there"
    )


class RepositoryStore(DirectoryStore):
    """The store ``theta_dir`` of another repository on this machine."""

    def __init__(self, theta_dir: Path, url: str | None = None, anchor: Path | None = None):
        theta_dir = Path(theta_dir)
        super().__init__(theta_dir / "objects", url=url, anchor=anchor or theta_dir.parent)
        git_dir = theta_dir.parent
        # Where its commands run: the work tree of a repository that has one.
        self.repository = git_dir.parent if git_dir.name == ".git" else git_dir
        self.corrupt_hint = _fsck_hint(self.repository)
        self._packs_dir = theta_dir / "packs"
        self._packs: list[tuple[PackIndex, int]] | None = None
        self._lock = threading.Lock()

    def _loaded_packs(self) -> list[tuple[PackIndex, int]]:
        """The packs in place, each index checked and its pack open; loaded once."""
        with self._lock:
            if self._packs is None:
                packs = []
                for path in pack_paths(self._packs_dir):
                    try:
                        fd = open_pack_file(path)
                    except FileNotFoundError:  # repacked away since the listing
                        continue
                    except PackError as exc:
                        raise RepositoryPackError(self.url, exc, self.repository) from None
                    try:
                        packs.append((PackIndex(path), fd))
                    except PackError as exc:
                        os.close(fd)
                        raise RepositoryPackError(self.url, exc, self.repository) from None
                self._packs = packs
            return self._packs

    def _packed(self, oid: str) -> tuple[int, int, int] | None:
        """(descriptor, offset, length) of a packed copy of ``oid``, or None."""
        for index, fd in self._loaded_packs():
            if (entry := index.find(oid)) is not None:
                return fd, entry[0], entry[1]
        return None

    def has(self, oid: str) -> bool:
        return super().has(oid) or self._packed(oid) is not None

    def list(self) -> Iterator[str]:
        loose = set(super().list())
        packed = {oid for index, _ in self._loaded_packs() for oid, _, _ in index.entries()}
        yield from sorted(loose | packed)

    def _open_stored(self, oid: str) -> StoredObject | None:
        """``oid`` as this store holds it, loose first, as its own store looks it up."""
        try:
            fd = self._open_object(oid)
        except RemoteObjectMissingError:
            found = self._packed(oid)
            if found is None:
                return None
            fd, offset, length = found
            return StoredObject(oid, fd, offset, length, self._open_stored)
        try:
            return StoredObject(oid, fd, 0, os.fstat(fd).st_size, self._open_stored, owns_fd=True)
        except BaseException:
            os.close(fd)
            raise

    def get(self, oid: str, sink: ObjectSink) -> None:
        self._check_reachable(oid)
        try:
            stored = self._open_stored(oid)
            if stored is None:
                raise RemoteObjectMissingError(self.url, oid)
            # The transfer checks the sha256 of every byte: the reader need not.
            with ObjectReader(stored, verify=False) as reader:
                self._check_chain(stored)
                reader.seek(0)
                while chunk := reader.read(COPY_CHUNK):
                    sink.write(memoryview(chunk))
        except ObjectFormatError as exc:
            raise RepositoryObjectError(self.url, oid, exc.reason, self.repository) from None

    def _check_chain(self, stored: StoredObject) -> None:
        """Refuse a delta chain whose blocks, decoded together, would pass the budget."""
        held = 0
        member = stored
        while True:
            if member.encoded is not None:
                held += member.encoded.block_size
            if held > CHAIN_BUDGET:
                raise ObjectFormatError(
                    stored.oid,
                    f"its delta chain holds blocks of more than {CHAIN_BUDGET >> 20} MiB "
                    "to decode; refused",
                )
            if member.base_oid is None:
                return
            member = member.base()
