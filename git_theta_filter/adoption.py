"""What ``git theta track`` finds in a repository that already has models, and says about it.

Three situations need more than a new ``.gitattributes`` line:

* **files already committed raw**: the line changes nothing until the files
  are added again, so the exact next step is printed (or, with
  ``--renormalize``, taken);
* **a pattern another filter tracks** (git-lfs): a second line under the
  first would leave git-lfs pointers in history that a theta checkout would
  write out as the model; ``track`` refuses and explains, unless
  ``--replace-lfs`` asks to swap the line;
* **names of existing files instead of a pattern**: an unquoted ``*.pth``
  that the shell expanded tracks only today's files; ``track`` warns.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pygit2

from .attributes import filter_lines, filters_of, paths_matching
from .errors import ThetaError
from .gitrepo import GitRepo
from .history import open_pygit2, read_manifest_blob
from .lfs_pointer import MAX_POINTER_BYTES, parse_lfs_pointer

__all__ = [
    "OtherFilterError",
    "IndexVersions",
    "shell_expansion_warning",
    "check_other_filters",
    "index_versions",
    "guidance",
    "check_work_tree_files",
    "renormalize",
]

# A filter value that is no driver: the attribute is set, unset or unspecified.
_NO_DRIVER = {"theta", "set", "unset", "unspecified"}
_GLOB_CHARACTERS = set("*?[")
_SHOWN = 3  # paths named in a message before "and N more"


class OtherFilterError(ThetaError):
    """A pattern whose files another filter (git-lfs) already tracks."""

    exit_code = 1

    def __init__(self, pattern: str, filters: list[str], examples: list[str]) -> None:
        names = ["git-lfs" if name == "lfs" else f"filter={name}" for name in filters]
        which = " and ".join(names)
        files = f" ({_names(examples)})" if examples else ""
        quoted = shlex.quote(pattern)
        if filters == ["lfs"]:
            how = (
                f"to convert the history too, run `git theta migrate import --include={quoted} "
                f"--everything` (it rewrites commits; see docs/migrate.md); to switch from the "
                f"next commit on, run `git theta track --replace-lfs {quoted}`"
            )
        else:
            how = f"remove the filter={filters[0]} line from .gitattributes first"
        super().__init__(
            f"{pattern!r} is tracked by {which}{files}. A file goes through one filter only, "
            f"so a theta line as well would silently take these files away from {which}",
            hint=how,
        )
        self.pattern = pattern
        self.filters = filters


def shell_expansion_warning(patterns: list[str], cwd: Path) -> str | None:
    """A warning when patterns are names of existing files, as an unquoted glob expands to."""
    files = [p for p in patterns if not _GLOB_CHARACTERS & set(p) and (cwd / p).is_file()]
    if not files:
        return None
    suffixes = {Path(f).suffix for f in files}
    suggestion = f"'*{suffixes.pop()}'" if len(suffixes) == 1 and "" not in suffixes else "'*.pth'"
    are = "is the name of an existing file" if len(files) == 1 else "are names of existing files"
    return (
        f"{_names(files)} {are}, not a pattern: did the shell expand an unquoted glob? "
        f"Each name is tracked as given, so files added later are not. To track every such "
        f"file, quote the pattern: git theta track {suggestion}"
    )


def _index_entries(repo: GitRepo) -> dict[str, str]:
    """Path -> blob id of every stage-0 file in the index."""
    entries = {}
    output = repo.git("ls-files", "-s", "-z")
    for record in output.split("\0"):
        if not record:
            continue
        info, _, path = record.partition("\t")
        mode, blob_id, stage = info.split()
        if stage == "0" and mode in ("100644", "100755"):
            entries[path] = blob_id
    return entries


def check_other_filters(repo: GitRepo, text: str, patterns: list[str], allow: set[str]) -> None:
    """Raise :class:`OtherFilterError` for a pattern that a filter other than theta
    (and not in ``allow``) tracks, by its own line or for files in the index.
    """
    entries = _index_entries(repo)
    for pattern in patterns:
        filters = {
            line.filter
            for line in filter_lines(text)
            if line.pattern == pattern and line.filter not in _NO_DRIVER
        }
        matching = sorted(paths_matching(repo, [pattern], entries))
        current = filters_of(repo, matching)
        examples = [path for path in matching if current.get(path, "theta") not in _NO_DRIVER]
        filters |= {current[path] for path in examples}
        if filters - allow:
            raise OtherFilterError(pattern, sorted(filters), examples)


@dataclass
class IndexVersions:
    """The index's files that theta tracks, by how their staged version is stored."""

    manifests: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    lfs: list[str] = field(default_factory=list)


def index_versions(repo: GitRepo, patterns: list[str]) -> IndexVersions:
    """Classify the staged version of every file that ``patterns`` match and theta now tracks."""
    entries = _index_entries(repo)
    matching = paths_matching(repo, patterns, entries)
    tracked = [
        path for path, value in filters_of(repo, sorted(matching)).items() if value == "theta"
    ]
    git = open_pygit2(repo)
    found = IndexVersions()
    for path in tracked:
        oid = pygit2.Oid(hex=entries[path])
        if read_manifest_blob(git, oid) is not None:
            found.manifests.append(path)
        elif _is_lfs_pointer(git, oid):
            found.lfs.append(path)
        else:
            found.raw.append(path)
    return found


def _is_lfs_pointer(git: pygit2.Repository, oid: pygit2.Oid) -> bool:
    try:
        _kind, size = git.odb.read_header(oid)
    except KeyError:
        return False
    if size >= MAX_POINTER_BYTES:
        return False
    return parse_lfs_pointer(git[oid].peel(pygit2.Blob).data) is not None


def guidance(versions: IndexVersions, patterns: list[str], renormalized: bool) -> list[str]:
    """What to do about tracked files whose committed version theta did not write."""
    stale = versions.raw + versions.lfs
    if not stale:
        return []
    one = len(stale) == 1
    it, its = ("it", "Its") if one else ("them", "Their")
    lines = []
    if versions.raw:
        kind = "a plain file" if len(versions.raw) == 1 else "plain files"
        lines.append(
            f"{_names(versions.raw)} {_is_are(versions.raw)} already committed as {kind}, "
            f"so this line changes nothing for {it} until {it} {'is' if one else 'are'} "
            f"added again."
        )
    if versions.lfs:
        kind = "a git-lfs pointer" if len(versions.lfs) == 1 else "git-lfs pointers"
        lines.append(
            f"{_names(versions.lfs)} {_is_are(versions.lfs)} committed as {kind}. Checking "
            f"out such a version reads its object from .git/lfs/objects (`git lfs fetch --all` "
            f"downloads them all), or fails with an error; it never writes the pointer as the "
            f"model."
        )
    quoted = " ".join(shlex.quote(path) for path in stale)
    if renormalized:
        lines.append(
            f"Staged {_names(stale)} again through theta (git add --renormalize); commit "
            f'{it}: git commit -m "Store models with git-theta"'
        )
    else:
        lines.append(
            f"To store {it} through theta, stage {it} again and commit (or run this command "
            f"with --renormalize): git add .gitattributes && git add --renormalize -- {quoted}"
            f' && git commit -m "Store models with git-theta"'
        )
    include = shlex.quote(",".join(patterns))
    lines.append(
        f"{its} older versions stay as they are in history; theta-log and theta-diff read "
        f"them. To rewrite history too: git theta migrate import --include={include} "
        f"--everything (see docs/migrate.md)."
    )
    return lines


def check_work_tree_files(repo: GitRepo, patterns: list[str]) -> None:
    """Refuse to renormalize a work-tree file that is a git-lfs pointer, not the model:
    cleaned, the pointer text itself would be stored as the model.
    """
    assert repo.worktree is not None
    for path in sorted(paths_matching(repo, patterns, _index_entries(repo))):
        try:
            with open(repo.worktree / path, "rb") as file:
                head = file.read(MAX_POINTER_BYTES)
        except FileNotFoundError:
            continue
        if parse_lfs_pointer(head) is not None:
            raise ThetaError(
                f"{path} in the work tree is a git-lfs pointer, not the model; nothing was changed",
                hint=f"run `git lfs fetch` and `git checkout -- {shlex.quote(path)}` "
                "(theta reads the git-lfs object), then track again",
            )


def renormalize(repo: GitRepo, paths: Iterable[str]) -> None:
    """``git add --renormalize`` the paths, and ``.gitattributes`` with them."""
    paths = list(paths)
    repo.git("add", "--", ".gitattributes")
    if paths:
        repo.git("--literal-pathspecs", "add", "--renormalize", operands=paths)


def _is_are(paths: list[str]) -> str:
    return "is" if len(paths) == 1 else "are"


def _names(paths: list[str]) -> str:
    if len(paths) <= _SHOWN:
        return " and ".join([", ".join(paths[:-1]), paths[-1]]) if len(paths) > 1 else paths[0]
    return f"{', '.join(paths[:_SHOWN])} and {len(paths) - _SHOWN} more"
