"""Versions of a model file that theta never cleaned, read as manifests.

A file that theta tracks now often has older versions stored another way:

* **raw**: committed before ``git theta track``, so the blob is the torch zip
  or safetensors file itself;
* **git-lfs**: the blob is a pointer, and the file is in the local git-lfs
  storage (``.git/lfs/objects``).

History readers (``theta-log``, ``theta-diff``, the Python API, ``show``) ask
a :class:`VersionReader` for the manifest of a blob at a path. A manifest blob
is parsed as it is. Any other blob at a path that ``.gitattributes`` routes
through theta now is streamed through the same :func:`~.clean.clean` that
``git add`` runs (the same restricted readers, never a pickle executed), its
tensors go into the local store, and the manifest is kept in
``theta/converted/<blob id>``, so the next read costs a file read. An entry
whose objects have gone (``git theta gc`` deletes them, as nothing in history
names them) is converted again.

A git-lfs pointer whose object is not local is an error that names the
command that fetches it; an object that does not match its pointer is an
error too. Elsewhere (a path theta does not track) a blob is a model version
only when it is a manifest, as before.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pygit2

from .attributes import FilterAttribute, filters_at
from .blob_stream import BlobStreamer
from .clean import Warn, clean
from .gitrepo import is_git_object_id
from .history import read_manifest_blob
from .lfs_pointer import MAX_POINTER_BYTES, LfsStorage, check_object, parse_lfs_pointer
from .locks import writer_lock
from .manifest import MAX_MANIFEST_BYTES, Manifest, ManifestError, looks_like_manifest
from .store.local import LocalStore

__all__ = ["VersionReader", "ConversionCache", "clean_blob", "common_dir_of", "lfs_storage_of"]


def common_dir_of(git: pygit2.Repository) -> Path:
    """The common git dir of ``git`` (a linked worktree's git dir names it in ``commondir``)."""
    git_dir = Path(git.path)
    pointer = git_dir / "commondir"
    if pointer.is_file():
        return (git_dir / pointer.read_text().strip()).resolve()
    return git_dir


def lfs_storage_of(git: pygit2.Repository) -> LfsStorage:
    try:
        configured = git.config["lfs.storage"]
    except KeyError:
        configured = None
    return LfsStorage.for_git_dirs(Path(git.path), common_dir_of(git), configured)


class ConversionCache:
    """Manifests of converted blobs, in ``theta/converted/<blob id>``; disposable."""

    def __init__(self, theta_dir: Path, store: LocalStore) -> None:
        self.dir = theta_dir / "converted"
        self.store = store

    def get(self, blob_id: str) -> bytes | None:
        """The cached manifest, when it parses and every object it names is still stored."""
        if not is_git_object_id(blob_id):
            return None
        try:
            data = (self.dir / blob_id).read_bytes()
            manifest = Manifest.parse(data)
        except (OSError, ManifestError):
            return None
        if not all(self.store.has(oid) for oid in manifest.object_ids()):
            return None
        return data

    def put(self, blob_id: str, manifest: bytes) -> None:
        if not is_git_object_id(blob_id):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        with os.fdopen(fd, "wb") as file:
            file.write(manifest)
        os.replace(name, self.dir / blob_id)


def clean_blob(
    blobs: BlobStreamer,
    store: LocalStore,
    lfs: LfsStorage,
    blob_id: str,
    path: str,
    warn: Warn | None = None,
    where: str | None = None,
) -> bytes:
    """The manifest ``git add`` would make of a blob that is not a manifest.

    A git-lfs pointer is replaced by its object, whose size and sha256 must
    be the pointer's. The caller holds the store's writer lock.
    """
    if warn is None:

        def warn(message: str) -> None:
            print(f"git-theta: warning: {message}", file=sys.stderr, flush=True)

    stream = blobs.open(blob_id, path)
    if stream.size < MAX_POINTER_BYTES:
        data = bytearray()
        buffer = bytearray(MAX_POINTER_BYTES)
        while count := stream.readinto(memoryview(buffer)):
            data += buffer[:count]
        pointer = parse_lfs_pointer(bytes(data))
        if pointer is None:
            return clean(io.BytesIO(bytes(data)), store, path, warn)
        with lfs.open(pointer, path, where) as file:
            manifest_bytes = clean(file, store, path, warn)
        manifest = Manifest.parse(manifest_bytes)
        check_object(pointer, path, manifest.size, manifest.sha256)
        return manifest_bytes
    return clean(stream, store, path, warn)


class VersionReader:
    """Manifests of blobs in one repository; raw and git-lfs versions at tracked paths converted."""

    def __init__(self, git: pygit2.Repository, warn: Warn | None = None) -> None:
        self._git = git
        self._warn = warn
        self._theta_dir = common_dir_of(git) / "theta"
        self._store: LocalStore | None = None
        self._blobs: BlobStreamer | None = None
        self._tracked: dict[str, bool] = {}
        self._attributes: FilterAttribute | None = None
        self._manifests: dict[str, Manifest | None] = {}  # manifest blobs, by blob id
        self._converted: dict[str, Manifest | None] = {}  # other blobs at tracked paths

    def tracked(self, path: str) -> bool:
        """Whether ``.gitattributes`` routes ``path`` through theta, as ``git add`` sees it
        (in a bare repository: HEAD's ``.gitattributes``).
        """
        if path not in self._tracked:
            if self._git.workdir is None:
                flags = pygit2.enums.AttrCheck.INDEX_ONLY | pygit2.enums.AttrCheck.INCLUDE_HEAD
                value = self._git.get_attr(path, "filter", flags)
            else:
                if self._attributes is None:
                    self._attributes = FilterAttribute(Path(self._git.workdir))
                value = self._attributes(path)
            self._tracked[path] = value == "theta"
        return self._tracked[path]

    def track_many(self, paths: Iterable[str]) -> None:
        """Ask git about many paths in one ``git check-attr`` (a whole snapshot's files)."""
        wanted = [path for path in paths if path not in self._tracked]
        if self._git.workdir is None or not wanted:
            return
        for path, value in filters_at(Path(self._git.workdir), wanted).items():
            self._tracked[path] = value == "theta"

    def manifest(
        self, blob_id: pygit2.Oid | str, path: str, where: str | None = None
    ) -> Manifest | None:
        """The manifest of the blob at ``path``; None when it is no model version.

        ``where`` names the version (a commit) in errors.
        """
        key = str(blob_id)
        if key not in self._manifests:
            self._manifests[key] = read_manifest_blob(self._git, pygit2.Oid(hex=key))
        if self._manifests[key] is not None or not self.tracked(path):
            return self._manifests[key]
        if key not in self._converted:
            self._converted[key] = self._read_converted(key, path, where)
        return self._converted[key]

    def manifests(
        self, entries: dict[str, pygit2.Oid], where: str | None = None
    ) -> dict[str, Manifest]:
        """:meth:`manifest` of every ``path -> blob``, asking git about the paths at once."""
        found = {}
        for blob_id in entries.values():
            key = str(blob_id)
            if key not in self._manifests:
                self._manifests[key] = read_manifest_blob(self._git, blob_id)
        self.track_many(path for path, b in entries.items() if self._manifests[str(b)] is None)
        for path, blob_id in entries.items():
            manifest = self.manifest(blob_id, path, where)
            if manifest is not None:
                found[path] = manifest
        return found

    def _read_converted(self, blob_id: str, path: str, where: str | None) -> Manifest | None:
        """A raw or git-lfs version at a tracked path, cleaned (or from the cache)."""
        if self._store is None:
            self._store = LocalStore(self._theta_dir)
        cache = ConversionCache(self._theta_dir, self._store)
        converted = cache.get(blob_id)
        if converted is None:
            if self._damaged_manifest(pygit2.Oid(hex=blob_id)):
                return None
            converted = self._convert(blob_id, path, where)
            cache.put(blob_id, converted)
        return Manifest.parse(converted)

    def _damaged_manifest(self, oid: pygit2.Oid) -> bool:
        """A blob that starts like a manifest but is none: not a raw file either."""
        try:
            kind, size = self._git.odb.read_header(oid)
        except KeyError:
            return False  # not local (a partial clone); cleaning it fetches it
        if kind != pygit2.enums.ObjectType.BLOB:
            return True
        if size > MAX_MANIFEST_BYTES:
            return False
        return looks_like_manifest(self._git[oid].peel(pygit2.Blob).data)

    def _convert(self, blob_id: str, path: str, where: str | None) -> bytes:
        assert self._store is not None
        if self._blobs is None:
            self._blobs = BlobStreamer(Path(self._git.path))
        with writer_lock(self._theta_dir):
            return clean_blob(
                self._blobs,
                self._store,
                lfs_storage_of(self._git),
                blob_id,
                path,
                self._warn,
                where,
            )

    def close(self) -> None:
        if self._blobs is not None:
            self._blobs.close()
            self._blobs = None
        if self._attributes is not None:
            self._attributes.close()
            self._attributes = None
