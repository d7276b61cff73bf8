"""Staging model files in-process: clean into the store, then write the index entry.

``git add`` runs the filter in a new process, and ``git commit`` runs it again
for every file whose modification time is in the same second as the index
("racy git"). For a small model saved and committed at every training step,
those two process starts cost more than the work. The Python API and
``git theta commit`` stage here instead, and ``git theta commit`` makes the
commit with git's plumbing, which does not re-read the work tree.

Racy git stays correct: the index entry gets the stat data the file had
*before* it was read, so a file written again while (or after) it was
cleaned no longer matches that stat data, and git cleans it again.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pygit2

from .clean import clean, expecting_previous
from .errors import ThetaError
from .gitrepo import GitRepo
from .history import read_manifest_blob
from .locks import writer_lock
from .manifest import Manifest
from .store.local import LocalStore

__all__ = [
    "NotTrackedError",
    "check_tracked",
    "stage_file",
    "clean_into_index",
    "write_index_entry",
    "staged_manifest",
    "commit_index",
]


class NotTrackedError(ThetaError):
    """A path that .gitattributes does not route through the theta filter."""

    def __init__(self, path: str) -> None:
        suffix = Path(path).suffix
        super().__init__(
            f"{path} is not tracked by git-theta",
            # Quoted for the shell: the command is meant to be pasted.
            hint=f"run `git theta track {shlex.quote('*' + suffix)}`"
            if suffix
            else f"run `git theta track -- {shlex.quote(path)}`",
        )
        self.path = path


def check_tracked(repo: GitRepo, path: str) -> None:
    """Raise :class:`NotTrackedError` unless .gitattributes routes ``path`` through theta."""
    # `git check-attr` reads the work tree's .gitattributes, committed or not,
    # as `git add` does.
    line = repo.git("check-attr", "filter", operands=[path]).strip()
    if not line.endswith(": filter: theta"):
        raise NotTrackedError(path)


def staged_manifest(git: pygit2.Repository, path: str) -> Manifest | None:
    """The staged version's manifest: clean compares with its objects instead of
    rewriting, and stores changed tensors as deltas against them.
    """
    git.index.read()
    try:
        blob_id = git.index[path].id
    except KeyError:
        return None
    return read_manifest_blob(git, blob_id)


def write_index_entry(
    git: pygit2.Repository, path: str, blob_id: pygit2.Oid, stat: os.stat_result
) -> None:
    """Put ``blob_id`` in the index at ``path`` with the work-tree file's stat data,
    as ``git add`` does.

    pygit2's IndexEntry has no stat fields, and an entry without them
    makes git read (and clean) the file again at the next status or
    commit, so the entry is filled through pygit2's own cffi bindings.
    """
    from pygit2.errors import check_error
    from pygit2.ffi import C, ffi

    entry = ffi.new("git_index_entry *")
    for name, nanoseconds in (("ctime", stat.st_ctime_ns), ("mtime", stat.st_mtime_ns)):
        getattr(entry, name).seconds = nanoseconds // 1_000_000_000
        getattr(entry, name).nanoseconds = nanoseconds % 1_000_000_000
    entry.dev = stat.st_dev & 0xFFFFFFFF
    entry.ino = stat.st_ino & 0xFFFFFFFF
    entry.mode = 0o100755 if stat.st_mode & 0o100 else 0o100644
    entry.uid = stat.st_uid & 0xFFFFFFFF
    entry.gid = stat.st_gid & 0xFFFFFFFF
    entry.file_size = stat.st_size & 0xFFFFFFFF
    ffi.buffer(ffi.addressof(entry, "id"))[:] = blob_id.raw
    c_path = ffi.new("char[]", os.fsencode(path))
    entry.path = c_path
    index = git.index
    index.read()
    index_path = os.path.join(git.path, "index")
    # A stage-0 entry resolves a conflict only once the conflict's stages are gone,
    # as `git add` does.
    if index.conflicts is not None and path in index.conflicts:
        del index.conflicts[path]
    check_error(C.git_index_add(index._index, entry))
    _smudge_racily_clean_entries(index, index_path, os.fsencode(path))
    index.write()


def _smudge_racily_clean_entries(index: pygit2.Index, index_path: str, written: bytes) -> None:
    """Give every entry but ``written`` that git counts as racily clean a size of 0,
    which no file matches, so that git hashes the file again rather than trust its
    stat data.

    git compares file times by the second (unless built with USE_NSEC): an entry
    whose file was modified in the same second as the index was last written or
    later may match its stat data while its content changed, and git hashes it
    again while the index is that old. The index about to be written is newer,
    so git would stop: git's own index writes smudge such entries
    (read-cache.c, ce_smudge_racily_clean_entry); libgit2 does the same only by
    the nanosecond. A model's metrics file rewritten at the same size within
    the second of its last `git add` was committed stale without this. The entry
    being written carries the stat data from before its file was read, as
    `git add` gives its own.
    """
    from pygit2.ffi import C, ffi

    try:
        racy_from = os.stat(index_path).st_mtime_ns // 1_000_000_000
    except FileNotFoundError:
        return  # no index yet: no entries
    for position in range(C.git_index_entrycount(index._index)):
        entry = ffi.cast("git_index_entry *", C.git_index_get_byindex(index._index, position))
        if entry.mtime.seconds >= racy_from and ffi.string(entry.path) != written:
            entry.file_size = 0


def stage_file(repo: GitRepo, git: pygit2.Repository, relative: str) -> None:
    """Clean the work-tree file ``relative`` into the store and stage its manifest.

    The stat data is taken before the file is read: if the file changes
    while it is being cleaned, the entry does not match it, and git cleans it
    again at the next status or commit.
    """
    assert repo.worktree is not None
    check_tracked(repo, relative)
    target = Path(repo.worktree) / relative
    with writer_lock(repo.theta_dir):
        clean_into_index(git, repo.store(), relative, target, target.stat())


def clean_into_index(
    git: pygit2.Repository,
    store: LocalStore,
    relative: str,
    target: Path,
    stat: os.stat_result,
) -> None:
    """What ``git add`` does for one tracked file, without starting the filter: clean
    ``target`` into ``store`` (against the staged version's objects) and stage its
    manifest at ``relative`` with ``stat``. The caller holds the writer lock.
    """
    with (
        target.open("rb", buffering=0) as file,
        expecting_previous(store, staged_manifest(git, relative)),
    ):
        manifest = clean(file, store, relative)
    write_index_entry(git, relative, git.create_blob(manifest), stat)


def commit_index(repo: GitRepo, git: pygit2.Repository, message: str) -> str:
    """Commit the index as it is, with git's plumbing; returns the new commit's id.

    ``git commit`` would first refresh the index, cleaning again every file
    saved in the same second as the index was written. ``git write-tree``
    does not refresh, but it rewrites the index, and writing an index checks
    each racily clean entry against the work tree, which cleans the file
    again (file times are coarser than the gap between saving the model and
    writing its entry). libgit2 builds the tree from the index without
    writing the index. Commit hooks do not run.
    """
    git.index.read()
    tree = str(git.index.write_tree())
    parent = repo.git("rev-parse", "--verify", "-q", "HEAD", check=False).strip()
    # Ids that git printed are fused into options or passed after --end-of-options.
    if parent:
        commit = repo.git("commit-tree", f"-p{parent}", revisions=[tree], input=message.encode())
    else:
        commit = repo.git("commit-tree", revisions=[tree], input=message.encode())
    commit = commit.strip()
    subject = message.splitlines()[0] if message.strip() else ""
    kind = "commit" if parent else "commit (initial)"
    # The old value makes the update fail if HEAD moved meanwhile, as git commit's does.
    repo.git("update-ref", f"-m{kind}: {subject}", revisions=["HEAD", commit, parent or "0" * 40])
    return commit
