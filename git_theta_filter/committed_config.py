"""Git-config files that a repository commits: ``.thetaconfig`` (and ``.lfsconfig``).

Whoever made the commit wrote them (docs/security.md, classes 2 and 3), so
they are read the one careful way: the bytes through :mod:`repo_files` (a
regular file, never through a symlink, at most 1 MiB), then parsed by
``git config --file=- --no-includes``, so an ``[include]`` in the file
cannot pull in another file. A file that cannot be read or parsed is
treated as absent, with one warning on stderr.

Which version counts: a given revision's; otherwise the work tree's, else
the index's, else ``HEAD``'s.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import pygit2

from .gitrepo import GitError, GitRepo
from .repo_files import (
    UnsafeRepositoryFileError,
    read_index_file,
    read_tree_file,
    read_worktree_file,
)

__all__ = [
    "THETACONFIG",
    "CommittedConfig",
    "read_committed_config",
    "parse_config",
    "normalize_key",
]

THETACONFIG = ".thetaconfig"
_warned: set[tuple[str, str]] = set()


def normalize_key(key: str) -> str:
    """``Section.Sub.Var`` as git lists it: section and variable in lower case."""
    section, _, rest = key.partition(".")
    subsection, dot, variable = rest.rpartition(".")
    if not dot:
        return f"{section.lower()}.{rest.lower()}"
    return f"{section.lower()}.{subsection}.{variable.lower()}"


@dataclass(frozen=True)
class CommittedConfig:
    """The values of one committed config file; ``source`` says which version
    (``the work tree``, ``the index``, ``HEAD`` or a revision)."""

    name: str
    source: str
    values: dict[str, list[str]] = field(default_factory=dict)

    def get(self, key: str) -> str | None:
        """The last value of ``key``, as ``git config --get`` gives it."""
        found = self.values.get(normalize_key(key))
        return found[-1] if found else None

    def get_all(self, key: str) -> list[str]:
        return list(self.values.get(normalize_key(key), []))

    @property
    def where(self) -> str:
        return f"{self.name} ({self.source})"


def _warn_once(name: str, reason: str) -> None:
    if (name, reason) not in _warned:
        _warned.add((name, reason))
        print(f"git-theta: warning: {name} ignored: {reason}", file=sys.stderr)


def parse_config(repo: GitRepo, data: bytes) -> dict[str, list[str]]:
    """The values in git-config text, by normalized key, in file order; no include is followed."""
    listing = repo.git("config", "--file=-", "--no-includes", "--null", "--list", input=data)
    values: dict[str, list[str]] = {}
    for item in listing.split("\0"):
        if item:
            key, _, value = item.partition("\n")
            values.setdefault(key, []).append(value)
    return values


def _read_bytes(
    repo: GitRepo, git: pygit2.Repository, name: str, revision: str | None
) -> tuple[str, bytes] | None:
    if revision is not None:
        try:
            commit = git.revparse_single(revision).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.InvalidSpecError):
            return None
        data = read_tree_file(git, commit.tree, name)
        return (revision, data) if data is not None else None
    if repo.worktree is not None:
        data = read_worktree_file(repo.worktree, name)
        if data is not None:
            return ("the work tree", data)
    if not git.is_bare:
        data = read_index_file(git, name)
        if data is not None:
            return ("the index", data)
    if git.head_is_unborn:
        return None
    data = read_tree_file(git, git.head.peel(pygit2.Commit).tree, name)
    return ("HEAD", data) if data is not None else None


def read_committed_config(
    repo: GitRepo,
    name: str = THETACONFIG,
    revision: str | None = None,
    git: pygit2.Repository | None = None,
) -> CommittedConfig | None:
    """The committed config file ``name``; None when there is none (or it is refused)."""
    git = git or pygit2.Repository(str(repo.git_dir))
    try:
        found = _read_bytes(repo, git, name, revision)
        if found is None:
            return None
        source, data = found
        return CommittedConfig(name, source, parse_config(repo, data))
    except UnsafeRepositoryFileError as exc:
        _warn_once(name, exc.reason)
    except GitError as exc:
        detail = exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else "git config failed"
        _warn_once(name, f"not valid git-config syntax ({detail})")
    except OSError as exc:
        _warn_once(name, exc.strerror or str(exc))
    return None
