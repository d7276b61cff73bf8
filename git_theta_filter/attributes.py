"""``.gitattributes`` lines that route files through a filter, and the paths a pattern matches.

A line is ``<pattern> <attr> <attr> ...``; the one that matters here is
``filter=<driver>``: ``theta`` for us, ``lfs`` for git-lfs. Lines are edited
in place, so that a migration and its reverse give back the same file, byte
for byte, and with it the same commits.

Which paths a pattern matches is decided by git itself: the patterns go into
a temporary attributes file with an attribute of a random name, and
``git check-attr`` reports the paths that have it. Patterns in that file
match as in the top-level ``.gitattributes`` (``*.pth`` anywhere,
``models/*.pth`` from the top), and no attribute the repository sets can
interfere.

The work tree's ``.gitattributes`` is whatever a commit put there, a symbolic
link included (to a file outside the repository, a FIFO, ``/dev/zero``). git
ignores one that is a link; we neither read nor write through it
(:func:`read_worktree_attributes`).
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import subprocess
import tempfile
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import ThetaError
from .gitrepo import GitError, GitRepo, git_process, git_stream
from .repo_files import UnsafeRepositoryFileError, read_worktree_file

__all__ = [
    "THETA_ATTRIBUTES",
    "LFS_ATTRIBUTES",
    "ATTRIBUTES_FILE",
    "MAX_ATTRIBUTES_FILE",
    "BadPatternError",
    "AttributesFileRefusedError",
    "read_worktree_attributes",
    "worktree_attributes_text",
    "FilterLine",
    "check_pattern",
    "filter_lines",
    "set_filter_line",
    "remove_filter_line",
    "paths_matching",
    "filters_of",
    "FilterAttribute",
    "filters_at",
]

THETA_ATTRIBUTES = "filter=theta diff=theta merge=theta -text"
LFS_ATTRIBUTES = "filter=lfs diff=lfs merge=lfs -text"
ATTRIBUTES_FILE = ".gitattributes"
# git's own limit (ATTR_MAX_FILE_SIZE): it ignores a larger attributes file.
MAX_ATTRIBUTES_FILE = 100 << 20


class BadPatternError(ThetaError):
    exit_code = 2

    def __init__(self, pattern: str, why: str) -> None:
        super().__init__(f"cannot use {pattern!r} as a .gitattributes pattern: {why}")
        self.pattern = pattern


def check_pattern(pattern: str) -> None:
    """Refuse what a ``.gitattributes`` line cannot hold as one pattern."""
    if not pattern:
        raise BadPatternError(pattern, "it is empty")
    if any(c.isspace() for c in pattern):
        raise BadPatternError(pattern, "it has white space; write [[:space:]] instead")
    if pattern.startswith(("#", "!")):
        raise BadPatternError(pattern, "a line starting with '#' or '!' is no pattern")


class AttributesFileRefusedError(ThetaError):
    """The work tree's ``.gitattributes`` is a symbolic link, not a regular file, or too large:
    git ignores it, and we neither read it nor write through it."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"{ATTRIBUTES_FILE}: {reason}; git ignores it, and git-theta does not read it "
            "or write through it",
            hint=f"make {ATTRIBUTES_FILE} a regular file: `rm {ATTRIBUTES_FILE}`, then write "
            "the lines it should hold (`git theta track <pattern>` writes ours)",
        )
        self.reason = reason


def read_worktree_attributes(worktree: Path) -> bytes | None:
    """The work tree's top-level ``.gitattributes``; None when there is none.

    Read without following a symbolic link anywhere, nor blocking on a FIFO or
    reading a device (:func:`repo_files.read_worktree_file`):
    :class:`AttributesFileRefusedError` instead.
    """
    try:
        return read_worktree_file(worktree, ATTRIBUTES_FILE, MAX_ATTRIBUTES_FILE)
    except UnsafeRepositoryFileError as exc:
        raise AttributesFileRefusedError(exc.reason) from None


def worktree_attributes_text(worktree: Path) -> str | None:
    """:func:`read_worktree_attributes`, decoded as ``Path.read_text`` decodes (the
    locale's encoding, universal newlines), as our edits of the file have always read it."""
    data = read_worktree_attributes(worktree)
    return None if data is None else io.TextIOWrapper(io.BytesIO(data)).read()


@dataclass(frozen=True)
class FilterLine:
    number: int  # 0-based index into text.splitlines()
    pattern: str
    filter: str


def filter_lines(text: str) -> list[FilterLine]:
    """Every line that sets ``filter=<driver>``, in file order."""
    found = []
    for number, line in enumerate(text.splitlines()):
        parts = line.split()
        if len(parts) < 2 or parts[0].startswith("#"):
            continue
        for attribute in parts[1:]:
            if attribute.startswith("filter="):
                found.append(FilterLine(number, parts[0], attribute.removeprefix("filter=")))
    return found


def set_filter_line(text: str, pattern: str, attributes: str, replace: Iterable[str]) -> str:
    """``text`` with ``<pattern> <attributes>`` in place of the first line for ``pattern``
    whose filter is in ``replace``, or appended when there is none.

    Other lines for ``pattern`` with a filter in ``replace`` are removed.
    """
    replace = set(replace)
    lines = text.splitlines(keepends=True)
    targets = [
        line.number
        for line in filter_lines(text)
        if line.pattern == pattern and line.filter in replace
    ]
    new_line = f"{pattern} {attributes}"
    if not targets:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        return "".join(lines) + new_line + "\n"
    first = targets[0]
    lines[first] = new_line + ("\n" if lines[first].endswith("\n") else "")
    for number in reversed(targets[1:]):
        del lines[number]
    return "".join(lines)


def remove_filter_line(text: str, pattern: str, filter_name: str) -> str:
    """``text`` without the lines for ``pattern`` whose filter is ``filter_name``."""
    drop = {
        line.number
        for line in filter_lines(text)
        if line.pattern == pattern and line.filter == filter_name
    }
    return "".join(
        line for number, line in enumerate(text.splitlines(keepends=True)) if number not in drop
    )


def _stdin_paths(paths: Iterable[str]) -> bytes:
    return b"".join(os.fsencode(path) + b"\0" for path in paths)


def _values(output: str) -> dict[str, str]:
    """``git check-attr -z`` output, ``<path> NUL <attribute> NUL <value> NUL`` repeated."""
    fields = output.split("\0")
    return {fields[i]: fields[i + 2] for i in range(0, len(fields) - 2, 3)}


def paths_matching(repo: GitRepo, patterns: list[str], paths: Iterable[str]) -> set[str]:
    """The ``paths`` that one of ``patterns`` matches, as a top-level .gitattributes would."""
    for pattern in patterns:
        check_pattern(pattern)
    data = _stdin_paths(paths)
    if not data:
        return set()
    token = secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="theta-attributes-") as scratch:
        attributes_file = Path(scratch) / "attributes"
        attributes_file.write_text(
            "".join(f"{pattern} theta-probe-{token}\n" for pattern in patterns)
        )
        output = repo.git(
            "-c",
            f"core.attributesFile={attributes_file}",
            "check-attr",
            "-z",
            "--stdin",
            f"theta-probe-{token}",
            input=data,
        )
    return {path for path, value in _values(output).items() if value == "set"}


def filters_of(repo: GitRepo, paths: Iterable[str]) -> dict[str, str]:
    """The ``filter`` attribute of each path as git sees it now (``unspecified`` when none)."""
    data = _stdin_paths(paths)
    if not data:
        return {}
    return _values(repo.git("check-attr", "-z", "--stdin", "filter", input=data))


def filters_at(worktree: Path, paths: Iterable[str]) -> dict[str, str]:
    """:func:`filters_of` for the work tree at ``worktree``."""
    result = git_process(
        ["check-attr", "-z", "--stdin", "filter"], cwd=worktree, input=_stdin_paths(paths)
    )
    if result.returncode != 0:
        raise GitError(["check-attr"], result.stderr.decode("utf-8", "replace"))
    return _values(result.stdout.decode("utf-8", "surrogateescape"))


class FilterAttribute:
    """The ``filter`` attribute of one path at a time, from one ``git check-attr`` process.

    For callers that meet paths one by one (a history walk). It is git's own
    answer, as ``git add`` would see it: the work tree's ``.gitattributes``
    where it exists, the index's elsewhere (libgit2 merges both, and would
    still see a line the work tree's file no longer has). git flushes its
    answer to each path read from ``--stdin``.
    """

    def __init__(self, worktree: Path) -> None:
        self._worktree = worktree
        self._process: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    def __call__(self, path: str) -> str:
        if self._process is None:
            self._process = git_stream(
                ["check-attr", "--stdin", "-z", "filter"], cwd=self._worktree
            )
            self._finalizer = weakref.finalize(self, _end, self._process)
        assert self._process.stdin is not None and self._process.stdout is not None
        try:
            self._process.stdin.write(os.fsencode(path) + b"\0")
            self._process.stdin.flush()
        except BrokenPipeError:  # git has exited: the same failure as an answer cut short
            raise ThetaError(f"`git check-attr` stopped while reading {path}") from None
        answer = b""
        # <path> NUL filter NUL <value> NUL
        while answer.count(b"\0") < 3:
            chunk = os.read(self._process.stdout.fileno(), 4096)
            if not chunk:
                raise ThetaError(f"`git check-attr` stopped while reading {path}")
            answer += chunk
        return answer.split(b"\0")[2].decode("utf-8", "surrogateescape")

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


def _end(process: subprocess.Popen) -> None:
    if process.stdin is not None:
        # What a question left in the buffer cannot reach a git that has exited.
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
    if process.stdout is not None:
        process.stdout.close()
    process.wait()
