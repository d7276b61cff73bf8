"""The versions of the repository that a diff compares: a commit, the index, the working tree.

Each snapshot lists its model files (paths whose content is a manifest) and
reads any other file by path, for metrics files.

The working tree's model files are real checkpoints, not manifests. They are
cleaned the way ``git add`` would clean them: the index is copied to a
temporary file and ``git add -u`` runs on the copy (``GIT_INDEX_FILE``), so
git's own stat checks skip unchanged files and the theta filter cleans the
changed ones into the store. The real index is never touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pygit2

from .gitrepo import GitError, GitRepo, git_process
from .history import tree_blobs
from .manifest import Manifest
from .promisor import fetch_missing
from .raw_versions import VersionReader
from .repo_files import read_index_file, read_tree_file, read_worktree_file

__all__ = ["ModelVersion", "Snapshot", "tree_snapshot", "index_snapshot", "worktree_snapshot"]


@dataclass(frozen=True)
class ModelVersion:
    """One model file as one snapshot holds it."""

    path: str
    blob_id: str
    manifest: Manifest


class Snapshot:
    """Model files and other files of one version; ``commit`` is set for commits only."""

    def __init__(
        self,
        label: str,
        git: pygit2.Repository,
        entries: dict[str, pygit2.Oid],
        commit: pygit2.Commit | None = None,
        worktree: Path | None = None,
    ) -> None:
        self.label = label
        self.commit = commit
        self._git = git
        self._entries = entries  # path -> blob id, for every file
        self._worktree = worktree  # read files from here instead of from blobs
        self._models: dict[str, ModelVersion] | None = None

    def model_files(self) -> dict[str, ModelVersion]:
        """Paths whose content is a manifest, or a raw or git-lfs version of a tracked file
        (read as the manifest ``git add`` would make; see :mod:`.raw_versions`).
        """
        if self._models is None:
            self._models = {}
            # In a partial clone, every absent blob comes down in one batch.
            fetch_missing(self._git, self._entries.values())
            versions = VersionReader(self._git)
            for path, manifest in versions.manifests(self._entries, where=self.label).items():
                self._models[path] = ModelVersion(path, str(self._entries[path]), manifest)
        return self._models

    def read_file(self, path: str) -> bytes | None:
        """A file of this version that committed content names (a metrics file), or None.

        Regular files inside the repository only, never through a symlink
        (:mod:`repo_files`); raises ``UnsafeRepositoryFileError`` otherwise.
        """
        if self._worktree is not None:
            return read_worktree_file(self._worktree, path)
        if self.commit is not None:
            return read_tree_file(self._git, self.commit.tree, path)
        return read_index_file(self._git, path)


def commit_label(revision: str, commit: pygit2.Commit) -> str:
    """How a diff names a commit: the revision as typed, with its short id unless it is an id.

    ``HEAD~1 (0a976b7)``, but ``0a976b7`` for ``0a976b7`` and for the full id.
    """
    short = str(commit.id)[:7]
    if len(revision) >= 4 and str(commit.id).startswith(revision.lower()):
        return revision if len(revision) < len(str(commit.id)) else short
    return f"{revision} ({short})"


def tree_snapshot(git: pygit2.Repository, commit: pygit2.Commit, label: str) -> Snapshot:
    entries = dict(tree_blobs(git, commit.tree))
    return Snapshot(commit_label(label, commit), git, entries, commit=commit)


def _index_entries(index: pygit2.Index) -> dict[str, pygit2.Oid]:
    entries = {entry.path: entry.id for entry in index}
    # A path with a merge conflict has no single version.
    for sides in index.conflicts or ():
        for side in sides:
            if side is not None:
                entries.pop(side.path, None)
    return entries


def index_snapshot(git: pygit2.Repository) -> Snapshot:
    return Snapshot("index", git, _index_entries(git.index))


def worktree_snapshot(repo: GitRepo, git: pygit2.Repository) -> Snapshot:
    """The working tree, with model files cleaned into manifests as ``git add -u`` would."""
    repo.require_worktree("comparing with the work tree")
    index = index_snapshot(git)
    model_paths = sorted(index.model_files())
    entries = _index_entries(git.index)
    if model_paths:
        entries = _cleaned_entries(repo, model_paths)
    return Snapshot("working tree", git, entries, worktree=repo.worktree)


def _cleaned_entries(repo: GitRepo, model_paths: list[str]) -> dict[str, pygit2.Oid]:
    assert repo.worktree is not None
    with tempfile.TemporaryDirectory(prefix="theta-diff-") as scratch:
        index_path = Path(scratch) / "index"
        real_index = repo.git_dir / "index"
        if real_index.exists():
            # copy2 keeps the index's mtime, which git's racy-clean check compares
            # with the files' mtimes: a file changed in the same second as the
            # last `git add` is then still re-read rather than taken as unchanged.
            shutil.copy2(real_index, index_path)
        # The pathspecs are exact paths, so a name with glob characters means itself.
        result = git_process(
            ["--literal-pathspecs", "add", "-u", "--pathspec-from-file=-", "--pathspec-file-nul"],
            cwd=repo.worktree,
            input=b"\0".join(p.encode("utf-8", "surrogateescape") for p in model_paths),
            env={**os.environ, "GIT_INDEX_FILE": str(index_path)},
        )
        if result.returncode != 0:
            raise GitError(["add", "-u"], result.stderr.decode("utf-8", "replace"))
        return _index_entries(pygit2.Index(str(index_path)))
