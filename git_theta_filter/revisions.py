"""Revisions and paths on the command line, read as git reads them, through pygit2.

``git log`` and ``git diff`` take ``[<revision>...] [[--] <path>...]``.
Before ``--``, each argument is a revision if it names one; the first that
does not must be a path in the working tree, and so must every argument after
it. Otherwise the argument is ambiguous and git stops with exit code 128;
these commands do the same. Ranges: ``A..B`` is B without A (an empty side is
HEAD), ``A...B`` is the symmetric difference (for a diff: from the merge base
of A and B to B), and ``^A`` excludes A.

Paths are pathspecs relative to the current directory: a file, a directory
(everything under it), or a glob (``*`` matches ``/`` too, as in git).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pygit2

from .errors import ThetaError

__all__ = [
    "BadRevisionError",
    "AmbiguousArgumentError",
    "PathNotTrackedError",
    "Pathspec",
    "RevisionRange",
    "resolve_commit",
    "ref_tips",
    "split_arguments",
    "parse_range",
    "is_revision",
    "range_sides",
]


class BadRevisionError(ThetaError):
    exit_code = 128

    def __init__(self, revision: str) -> None:
        super().__init__(f"bad revision '{revision}'")
        self.revision = revision


class AmbiguousArgumentError(ThetaError):
    exit_code = 128

    def __init__(self, argument: str) -> None:
        super().__init__(
            f"ambiguous argument '{argument}': unknown revision or path not in the working tree",
            hint="use '--' to separate paths from revisions",
        )
        self.argument = argument


class PathNotTrackedError(ThetaError):
    exit_code = 128

    def __init__(self, path: str) -> None:
        super().__init__(
            f"pathspec '{path}' did not match any model file tracked by git-theta",
            hint="see `git theta ls-files`",
        )
        self.path = path


def resolve_commit(git: pygit2.Repository, revision: str) -> pygit2.Commit:
    """The commit a revision names; :class:`BadRevisionError` when there is none."""
    try:
        return git.revparse_single(revision).peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
        raise BadRevisionError(revision) from None


@dataclass
class RevisionRange:
    """The commits to walk: reachable from ``include``, not from ``exclude``.

    ``names`` says how each ``include`` was named (``main``, ``HEAD~2``, a
    branch of ``--all``), in the order given.
    """

    include: list[pygit2.Commit] = field(default_factory=list)
    exclude: list[pygit2.Commit] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def add(self, name: str, commit: pygit2.Commit) -> None:
        self.include.append(commit)
        self.names.append(name)


def range_sides(argument: str) -> tuple[str, str, bool] | None:
    """``A..B`` → (A, B, False); ``A...B`` → (A, B, True); None when not a range."""
    for separator, symmetric in (("...", True), ("..", False)):
        left, found, right = argument.partition(separator)
        if found:
            return left or "HEAD", right or "HEAD", symmetric
    return None


def is_revision(git: pygit2.Repository, argument: str) -> bool:
    sides = range_sides(argument)
    names = (
        [sides[0], sides[1]] if sides else [argument[1:] if argument.startswith("^") else argument]
    )
    try:
        for name in names:
            resolve_commit(git, name)
    except BadRevisionError:
        return False
    return True


def parse_range(
    git: pygit2.Repository,
    revisions: Iterable[str],
    refs: Iterable[tuple[str, pygit2.Commit]] | None = None,
) -> RevisionRange:
    """``git log``'s revision arguments as commits to include and exclude, then ``refs``
    (from :func:`ref_tips`, for ``--all`` and ``--branches``).

    HEAD when nothing is included, unless ``refs`` were asked for: as in git,
    ``--branches=<pattern>`` that matches no branch lists nothing.
    """
    walk = RevisionRange()
    for argument in revisions:
        sides = range_sides(argument)
        if sides is None:
            if argument.startswith("^"):
                walk.exclude.append(resolve_commit(git, argument[1:]))
            else:
                walk.add(argument, resolve_commit(git, argument))
            continue
        left, right, symmetric = (
            resolve_commit(git, sides[0]),
            resolve_commit(git, sides[1]),
            sides[2],
        )
        walk.add(sides[1], right)
        if symmetric:
            walk.add(sides[0], left)
            base = git.merge_base(left.id, right.id)
            if base is not None:
                walk.exclude.append(git[base].peel(pygit2.Commit))
        else:
            walk.exclude.append(left)
    for name, commit in refs or ():
        walk.add(name, commit)
    if not walk.include and refs is None:
        walk.add("HEAD", resolve_commit(git, "HEAD"))
    return walk


def _glob(pattern: str) -> str:
    """git's rule for ``--branches=<pattern>``: without ``?``, ``*`` or ``[``, ``/*`` is implied."""
    return pattern if any(c in pattern for c in "*?[") else pattern.rstrip("/") + "/*"


def ref_tips(
    git: pygit2.Repository, all_refs: bool, branch_patterns: Iterable[str] = ()
) -> list[tuple[str, pygit2.Commit]]:
    """The commits ``--all`` (every ref, and HEAD) and ``--branches[=<pattern>]`` name,
    with their short names: HEAD's branch first, then the rest by name.

    A pattern is a shell glob over branch names (``exp-*``); an empty one is every branch.
    """
    patterns = [p if not p else _glob(p) for p in branch_patterns]
    current = None if git.head_is_unborn or git.head_is_detached else git.head.name
    found: dict[str, tuple[str, pygit2.Commit]] = {}
    for name in git.references:
        is_branch = name.startswith("refs/heads/")
        branch = name[len("refs/heads/") :]
        wanted = all_refs or (
            is_branch and any(not p or fnmatch.fnmatchcase(branch, p) for p in patterns)
        )
        if not wanted:
            continue
        reference = git.references[name]
        try:
            commit = reference.peel(pygit2.Commit)
        except (pygit2.InvalidSpecError, ValueError, KeyError):
            continue  # a ref to a tree or blob, or a dangling symbolic ref
        found[name] = (reference.shorthand, commit)
    if all_refs and not git.head_is_unborn and git.head_is_detached:
        found["HEAD"] = ("HEAD", git.head.peel(pygit2.Commit))
    order = sorted(found, key=lambda name: (name != current, found[name][0]))
    return [found[name] for name in order]


class Pathspec:
    """Paths given on the command line, as patterns over repository-relative paths."""

    def __init__(self, arguments: list[str], cwd: Path, worktree: Path | None) -> None:
        self.arguments = arguments
        self._patterns = [self._relative(argument, cwd, worktree) for argument in arguments]

    @staticmethod
    def _relative(argument: str, cwd: Path, worktree: Path | None) -> str:
        if worktree is None:
            return argument.strip("/") or "."
        absolute = os.path.normpath(os.path.join(cwd, argument))
        relative = os.path.relpath(absolute, worktree)
        if relative == ".." or relative.startswith("../"):
            raise PathNotTrackedError(argument)
        return relative.replace(os.sep, "/")

    def __bool__(self) -> bool:
        return bool(self._patterns)

    @staticmethod
    def _matches(pattern: str, path: str) -> bool:
        if pattern == ".":
            return True
        if any(c in pattern for c in "*?["):
            return fnmatch.fnmatchcase(path, pattern)
        return path == pattern or path.startswith(pattern + "/")

    def match(self, path: str) -> bool:
        """True when no paths were given, or one of them covers ``path``."""
        return not self._patterns or any(self._matches(p, path) for p in self._patterns)

    def check_tracked(self, model_paths: Iterable[str]) -> None:
        """Raise :class:`PathNotTrackedError` for the first argument that matches no model file."""
        paths = list(model_paths)
        for argument, pattern in zip(self.arguments, self._patterns, strict=True):
            if not any(self._matches(pattern, path) for path in paths):
                raise PathNotTrackedError(argument)


def split_arguments(
    git: pygit2.Repository,
    before_separator: list[str],
    after_separator: list[str] | None,
    cwd: Path,
) -> tuple[list[str], list[str]]:
    """Revisions and paths, disambiguated as git does
    (``after_separator`` is None without ``--``).
    """
    revisions: list[str] = []
    paths: list[str] = []
    for argument in before_separator:
        if paths or not is_revision(git, argument):
            if after_separator is not None:
                raise BadRevisionError(argument)
            if not os.path.lexists(cwd / argument):
                raise AmbiguousArgumentError(argument)
            paths.append(argument)
        else:
            revisions.append(argument)
    return revisions, paths + list(after_separator or [])
