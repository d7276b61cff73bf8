"""The bytes a file had at a revision, byte for byte: what ``git theta show REV:path`` writes.

``git show REV:model.pth`` prints what git stores for a model file, its
manifest; ``torch.load`` on that fails with misleading advice. Here the blob is
turned back into the file exactly as a checkout would turn it:

* a manifest is rebuilt from the local store, after fetching the objects it
  lacks from the remote's store (as a checkout does); the result is checked
  against the manifest's size and sha256 while it streams;
* a git-lfs pointer (a version committed while git-lfs tracked the file) is
  its object from the local git-lfs storage, checked against the pointer;
* any other blob (a file committed before it was tracked, a file theta does
  not track) is the file itself, streamed from git's object database.

A file is named as git names one: ``<rev>:<path>`` with ``<path>`` from the top
of the work tree (or from the current directory when it starts with ``./`` or
``../``), and ``:<path>`` for the index.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pygit2

from .errors import ThetaError
from .filter import smudge_or_fetch
from .gitrepo import GitRepo
from .history import open_pygit2, read_blob
from .lfs_pointer import parse_lfs_pointer
from .manifest import MAX_MANIFEST_BYTES, looks_like_manifest
from .on_demand import OnDemandFetcher
from .promisor import fetch_missing
from .revisions import resolve_commit

__all__ = ["FileSpecError", "NoSuchFileError", "FileAt", "locate_file", "write_file_at"]

Write = Callable[[memoryview], object]
_CHUNK = 1 << 20


class FileSpecError(ThetaError):
    """An argument that is not ``<rev>:<path>``."""

    exit_code = 2

    def __init__(self, spec: str) -> None:
        super().__init__(
            f"{spec!r} does not name a file at a revision",
            hint="write <rev>:<path>, e.g. HEAD~2:model.pth, or :<path> for the staged version",
        )
        self.spec = spec


class NoSuchFileError(ThetaError):
    """The revision (or the index) has no file at that path."""

    exit_code = 128

    def __init__(self, revision: str, path: str) -> None:
        where = revision or "the index"
        super().__init__(f"path '{path}' does not exist in {where}")
        self.revision = revision
        self.path = path


@dataclass(frozen=True)
class FileAt:
    """A file as one revision holds it; ``revision`` is "" (and ``commit`` None) for the
    index."""

    revision: str
    path: str
    blob_id: pygit2.Oid
    commit: str | None = None


def _top_relative(repo: GitRepo, path: str, cwd: Path | None) -> str:
    """``path`` from the top of the work tree; ``./`` and ``../`` start from ``cwd``."""
    if path.startswith(("./", "../")) and repo.worktree is not None:
        here = Path(cwd or Path.cwd()).resolve()
        try:
            prefix = here.relative_to(repo.worktree.resolve()).as_posix()
        except ValueError:
            prefix = ""
        path = posixpath.join(prefix, path)
    normalized = posixpath.normpath(path)
    return "" if normalized in (".", "..") or normalized.startswith("../") else normalized


def locate_file(repo: GitRepo, spec: str, cwd: Path | None = None) -> FileAt:
    """The file ``<rev>:<path>`` (or ``:<path>``) names."""
    revision, colon, raw_path = spec.partition(":")
    if not colon or not raw_path:
        raise FileSpecError(spec)
    path = _top_relative(repo, raw_path, cwd)
    git = open_pygit2(repo)
    if not revision:
        try:
            entry = git.index[path]
        except (KeyError, ValueError):
            raise NoSuchFileError("", path or raw_path) from None
        return FileAt("", path, entry.id)
    commit = resolve_commit(git, revision)
    tree = commit.tree
    try:
        found = tree[path] if path else None
    except KeyError:
        found = None
    if found is None or found.type != pygit2.enums.ObjectType.BLOB:
        raise NoSuchFileError(revision, path or raw_path)
    return FileAt(revision, path, found.id, str(commit.id))


def write_file_at(repo: GitRepo, file: FileAt, write: Write) -> None:
    """Stream the file's exact bytes to ``write``.

    Raises before the first byte when the objects cannot all be found, and
    after the last when the rebuilt bytes do not match the manifest.
    """
    git = open_pygit2(repo)
    fetch_missing(git, [file.blob_id])
    _, size = git.odb.read_header(file.blob_id)
    if size <= MAX_MANIFEST_BYTES:
        content = read_blob(git, file.blob_id)
        # A git-lfs pointer (a version from before theta) is its git-lfs object.
        if looks_like_manifest(content) or parse_lfs_pointer(content) is not None:
            fetcher = OnDemandFetcher(repo, file.commit)
            smudge_or_fetch(content, repo.store(), file.path, fetcher, repo=repo).write(write)
            return
    with pygit2.BlobIO(git[file.blob_id].peel(pygit2.Blob)) as stream:
        while chunk := stream.read(_CHUNK):
            write(memoryview(chunk))
