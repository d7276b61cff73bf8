"""Reading a file that committed content names: from a tree, the index or the work tree.

A committed ``.thetaconfig`` names metrics files; a model file has its
``<path>.metrics.json``. Both names and contents come from whoever made the
commit (docs/security.md, class 3), so every read here:

* takes only a relative path inside the repository: no leading ``/``, no
  empty, ``.`` or ``..`` component, no ``.git`` component, no NUL;
* reads a regular file only. In a tree or the index, a symlink (mode
  120000), a submodule or a directory on the way is refused; its target is
  never read. In the work tree, every directory on the way is opened with
  ``O_NOFOLLOW`` relative to the one before, so a symlink anywhere in the path
  (committed, or made later) is refused rather than followed out of the
  repository, and a FIFO or device is refused without blocking;
* reads at most ``limit`` bytes (default :data:`MAX_COMMITTED_FILE`, 1 MiB):
  a blob's size is read from its header first, a file's from ``fstat``, and
  never more than ``limit + 1`` bytes are read.

An absent file is ``None``; a refused one raises :class:`UnsafeRepositoryFileError`.
Writers into the work tree use :func:`symbolic_link_on_the_way` to refuse the
same links, and :func:`replaced_whole` to replace a file in one rename.
pygit2 is imported only by the readers of trees and the index: a filter's start
reads the work tree's ``.gitattributes`` here, and git waits for it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ThetaError

if TYPE_CHECKING:
    import pygit2

__all__ = [
    "MAX_COMMITTED_FILE",
    "UnsafeRepositoryFileError",
    "repository_path_parts",
    "read_blob_file",
    "read_tree_file",
    "read_index_file",
    "read_worktree_file",
    "symbolic_link_on_the_way",
    "replaced_whole",
]

MAX_COMMITTED_FILE = 1 << 20


class UnsafeRepositoryFileError(ThetaError):
    """A file that committed content names, refused: outside the repository,
    not a regular file, or too large."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"{path}: {reason}; not read",
            hint="name a regular file inside the repository, at most 1 MiB",
        )
        self.path = path
        self.reason = reason


def repository_path_parts(path: str) -> list[str]:
    """The components of ``path``, which must name something inside the repository."""
    parts = path.split("/")
    if not path or "\0" in path:
        raise UnsafeRepositoryFileError(repr(path), "is not a path")
    if path.startswith("/"):
        raise UnsafeRepositoryFileError(path, "is an absolute path")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafeRepositoryFileError(path, "has an empty, '.' or '..' component")
        if part.lower() == ".git":
            raise UnsafeRepositoryFileError(path, "is inside .git")
    return parts


def _check_size(path: str, size: int, limit: int) -> None:
    if size > limit:
        raise UnsafeRepositoryFileError(path, f"is larger than {limit} bytes")


def read_blob_file(
    git: pygit2.Repository,
    path: str,
    blob_id: pygit2.Oid,
    mode: int,
    limit: int = MAX_COMMITTED_FILE,
) -> bytes:
    """The content of a tree or index entry, if it is a regular file of at most ``limit`` bytes."""
    import pygit2

    from .promisor import fetch_missing

    if mode == pygit2.enums.FileMode.LINK:
        raise UnsafeRepositoryFileError(path, "is a symbolic link")
    if mode not in (pygit2.enums.FileMode.BLOB, pygit2.enums.FileMode.BLOB_EXECUTABLE):
        raise UnsafeRepositoryFileError(path, "is not a regular file")
    try:
        kind, size = git.odb.read_header(blob_id)
    except KeyError:  # a partial clone left it out
        fetch_missing(git, [blob_id])
        kind, size = git.odb.read_header(blob_id)
    if kind != pygit2.enums.ObjectType.BLOB:
        raise UnsafeRepositoryFileError(path, "is not a regular file")
    _check_size(path, size, limit)
    blob = git[blob_id]
    assert isinstance(blob, pygit2.Blob)
    return blob.data


def read_tree_file(
    git: pygit2.Repository, tree: pygit2.Tree, path: str, limit: int = MAX_COMMITTED_FILE
) -> bytes | None:
    """``path`` in ``tree``: None when absent; refused through a symlink or submodule."""
    import pygit2

    from .history import lookup_tree

    parts = repository_path_parts(path)
    for name in parts[:-1]:
        try:
            entry = tree[name]
        except KeyError:
            return None
        if entry.filemode == pygit2.enums.FileMode.LINK:
            raise UnsafeRepositoryFileError(path, f"goes through the symbolic link {name}")
        if entry.filemode != pygit2.enums.FileMode.TREE:
            return None  # a file where a directory would be: nothing at that path
        tree = lookup_tree(git, entry.id)
    try:
        entry = tree[parts[-1]]
    except KeyError:
        return None
    if entry.filemode == pygit2.enums.FileMode.TREE:
        return None
    return read_blob_file(git, path, entry.id, entry.filemode, limit)


def read_index_file(
    git: pygit2.Repository, path: str, limit: int = MAX_COMMITTED_FILE
) -> bytes | None:
    """``path`` as staged in the index (stage 0): None when absent."""
    repository_path_parts(path)
    try:
        entry = git.index[path]
    except KeyError:
        return None
    return read_blob_file(git, path, entry.id, entry.mode, limit)


_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO someone placed there must not wait for a writer.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def read_worktree_file(worktree: Path, path: str, limit: int = MAX_COMMITTED_FILE) -> bytes | None:
    """``path`` in the work tree, never through a symlink: None when absent or a directory."""
    parts = repository_path_parts(path)
    directory = os.open(worktree, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts[:-1]:
            try:
                inner = os.open(name, _DIRECTORY_FLAGS, dir_fd=directory)
            except FileNotFoundError:
                return None
            except OSError as exc:
                # A symlink gives ELOOP or, with O_DIRECTORY, ENOTDIR: lstat tells which.
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if stat.S_ISLNK(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode):
                    raise UnsafeRepositoryFileError(
                        path, f"goes through the symbolic link {name}"
                    ) from None
                return None  # a file where a directory would be: nothing at that path
            os.close(directory)
            directory = inner
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=directory)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeRepositoryFileError(path, "is a symbolic link") from None
            raise
    finally:
        os.close(directory)
    # Checked before fdopen, which refuses a directory with IsADirectoryError.
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            return None
        raise UnsafeRepositoryFileError(path, "is not a regular file")
    with os.fdopen(fd, "rb", buffering=0) as file:
        _check_size(path, info.st_size, limit)
        data = file.read(limit + 1)  # the file may have grown since fstat
    _check_size(path, len(data), limit)
    return data


def symbolic_link_on_the_way(worktree: Path, parts: Sequence[str], last: bool = True) -> str | None:
    """The first of ``parts``' leading paths below ``worktree`` that is a symbolic link
    (``a``, ``a/b``, …; the whole path itself only with ``last``), or None.

    A commit can make any folder of the work tree a link to anywhere: what is written
    through it lands outside the repository."""
    for depth in range(1, len(parts) + (1 if last else 0)):
        if worktree.joinpath(*parts[:depth]).is_symlink():
            return "/".join(parts[:depth])
    return None


@contextlib.contextmanager
def replaced_whole(target: Path, prefix: str) -> Iterator[Path]:
    """A path of ``target``'s name in a new temporary folder beside it (named ``prefix``
    and some letters), renamed over ``target`` once the block has written it.

    So ``target`` is replaced whole or not at all, and a symbolic link there is
    replaced, never written through; the temporary folder is gone either way.
    """
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    try:
        temporary = scratch / target.name
        yield temporary
        os.replace(temporary, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
