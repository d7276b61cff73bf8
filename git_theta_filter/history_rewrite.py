"""Rewriting history with git-filter-repo: new blobs at matching paths, a new .gitattributes.

``git theta migrate import/export`` decide, blob by blob, what each version
of a model file becomes, and write the new blobs first. This module then
lets git-filter-repo (a well-kept rewriter built on ``git fast-export`` and
``git fast-import``) replay the commits:

* it runs with ``--no-data`` (filter-repo's choice when only a
  ``file_info_callback`` is given), so blob contents never pass through the
  rewrite: each file change names a blob id, and a matching path's id is
  swapped for its new one. Memory holds the id map, not the files;
* the top-level ``.gitattributes`` of every rewritten commit is edited by
  ``edit_attributes`` (root commits without one get one; an edit that leaves
  it empty deletes it);
* authors, committers, dates and messages are kept as they are
  (``--preserve-commit-hashes`` keeps filter-repo from rewriting hashes
  quoted in messages), and no commit is dropped (``--prune-empty never``,
  ``--prune-degenerate never``);
* ``--partial``: only the given refs are rewritten; remotes, reflogs and the
  rest are left alone, and nothing is garbage-collected.

filter-repo ends with ``git reset --hard`` in a work tree, which checks the
new versions out through the filters; the caller has refused a dirty one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import pygit2

from .errors import ThetaError
from .gitrepo import GitRepo

__all__ = ["RewriteError", "rewrite_history", "ATTRIBUTES_PATH"]

ATTRIBUTES_PATH = ".gitattributes"
_FILE_MODES = (b"100644", b"100755")


class RewriteError(ThetaError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"rewriting history failed: {detail}")


def rewrite_history(
    repo: GitRepo,
    refs: list[str],
    paths: set[str],
    blob_map: dict[str, str],
    edit_attributes: Callable[[str], str],
) -> dict[str, str]:
    """Rewrite ``refs``: at each path in ``paths``, blob ``old`` becomes ``blob_map[old]``.

    Returns old -> new commit id for every rewritten commit. The new blobs
    must already be in the repository.
    """
    import git_filter_repo as filter_repo

    git = pygit2.Repository(str(repo.git_dir))
    encoded_paths = {os.fsencode(path) for path in paths}
    attributes_cache: dict[str, bytes | None] = {}

    def new_attributes(original: str) -> bytes | None:
        """The new .gitattributes blob id for an original text; None when it goes away."""
        if original not in attributes_cache:
            text = edit_attributes(original)
            attributes_cache[original] = (
                str(git.create_blob(text.encode())).encode() if text.strip() else None
            )
        return attributes_cache[original]

    def file_info(
        filename: bytes, mode: bytes, blob_id: bytes, _value: object
    ) -> tuple[bytes, bytes, bytes]:
        if filename in encoded_paths and mode in _FILE_MODES:
            blob_id = blob_map.get(blob_id.decode(), blob_id.decode()).encode()
        return filename, mode, blob_id

    def commit_callback(commit: filter_repo.Commit, _metadata: object) -> None:
        changes = [c for c in commit.file_changes if c.filename == ATTRIBUTES_PATH.encode()]
        if not changes and commit.parents:
            return  # unchanged from the first parent, whose version was edited already
        others = [c for c in commit.file_changes if c.filename != ATTRIBUTES_PATH.encode()]
        original = ""
        if changes and changes[-1].type == b"M":
            blob = git[changes[-1].blob_id.decode()].peel(pygit2.Blob)
            original = blob.data.decode("utf-8", "surrogateescape")
        new = new_attributes(original)
        if new is not None:
            others.append(filter_repo.FileChange(b"M", ATTRIBUTES_PATH.encode(), new, b"100644"))
        elif changes:
            others.append(filter_repo.FileChange(b"D", ATTRIBUTES_PATH.encode()))
        commit.file_changes = others

    args = filter_repo.FilteringOptions.parse_args(
        [
            "--force",
            "--partial",
            "--quiet",
            "--preserve-commit-hashes",
            "--prune-empty",
            "never",
            "--prune-degenerate",
            "never",
            "--refs",
            *refs,
        ]
    )
    metadata = repo.git_dir / "filter-repo"
    ran_before = (metadata / "already_ran").exists()
    where = repo.worktree or repo.git_dir
    previous = os.getcwd()
    try:
        os.chdir(where)
        # filter-repo's progress report would mix into our output (the commit map);
        # its errors go to stderr or end in SystemExit.
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            filter_repo.RepoFilter(
                args, file_info_callback=file_info, commit_callback=commit_callback
            ).run()
    except SystemExit as exc:
        raise RewriteError(str(exc.code)) from None
    finally:
        os.chdir(previous)
    if not ran_before:
        # Otherwise the next migrate would be taken for a continuation of this one.
        (metadata / "already_ran").unlink(missing_ok=True)
    mapping = _read_commit_map(metadata / "commit-map")
    # Oldest first, parents before children, as the new history reads.
    order = repo.git("rev-list", "--reverse", "--topo-order", revisions=refs).split()
    rank = {new: number for number, new in enumerate(order)}
    return dict(sorted(mapping.items(), key=lambda item: rank.get(item[1], len(rank))))


def _read_commit_map(path: Path) -> dict[str, str]:
    """filter-repo's ``commit-map``: a header line, then ``<old> <new>`` per commit."""
    mapping = {}
    for line in path.read_text().splitlines()[1:]:
        old, new = line.split()
        mapping[old] = new
    return mapping
