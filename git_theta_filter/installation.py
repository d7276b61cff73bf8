"""``git theta install/uninstall/track/untrack``: git config, hooks and .gitattributes.

Install writes two drivers, both started by the same command name:

* ``filter.theta.process`` and ``filter.theta.required``: the clean/smudge filter,
  started through its client (:func:`filter_process_command`, docs/filter-server.md);
* ``merge.theta.driver`` and ``merge.theta.name``: the tensor-level merge
  (docs/merge.md). Git expands ``%O %A %B`` to temporary files holding the
  base, ours and theirs blobs, and ``%P`` to the path, shell-quoted.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .attributes import (
    THETA_ATTRIBUTES,
    check_pattern,
    filter_lines,
    set_filter_line,
    worktree_attributes_text,
)
from .errors import ThetaError
from .gitrepo import GitRepo, filter_command, run_git
from .hooks import install_hooks, uninstall_hooks

__all__ = [
    "FilterNotInstalledError",
    "require_filter",
    "ATTRIBUTES",
    "MERGE_DRIVER_NAME",
    "install",
    "uninstall",
    "filter_process_command",
    "track",
    "untrack",
    "tracked_patterns",
]

ATTRIBUTES = THETA_ATTRIBUTES
MERGE_DRIVER_NAME = "git-theta tensor-level merge"


class FilterNotInstalledError(ThetaError):
    """The theta filter is not configured, so git would take model files as they are."""

    def __init__(self, repo_path: Path) -> None:
        super().__init__(
            f"{repo_path}: the theta filter is not configured (filter.theta.process)",
            hint="run `git theta install`",
        )
        self.repo_path = repo_path


def require_filter(repo: GitRepo) -> None:
    """Refuse to write model files into a work tree whose git would not clean them.

    Without the filter, the next ``git add`` (or ``commit -a``) of such a file
    would store the whole raw checkpoint in history.
    """
    if not repo.config_get("filter.theta.process"):
        raise FilterNotInstalledError(repo.worktree or repo.git_dir)


def _scope_cwd(scope: str, repo: GitRepo | None) -> Path | None:
    """Where to run ``git config --<scope>``: ``--local`` needs the repository."""
    if scope not in ("local", "global", "system"):
        raise ValueError(f"unknown config scope {scope!r}")
    if scope == "local" and repo is None:
        raise ValueError("--local needs a repository")
    return repo.cwd if repo else None


def install(
    scope: str, repo: GitRepo | None, with_hooks: bool = True, force_hooks: bool = False
) -> list[str]:
    """Write the filter configuration at ``scope``; install hooks when inside a repository.

    ``force_hooks`` installs them even into a hooks directory that git tracks
    (see :func:`hooks.install_hooks`).
    """
    cwd = _scope_cwd(scope, repo)
    for key, value in (
        ("filter.theta.process", filter_process_command()),
        ("filter.theta.required", "true"),
        ("merge.theta.name", MERGE_DRIVER_NAME),
        ("merge.theta.driver", f"{filter_command()} merge %O %A %B %P"),
    ):
        run_git(["config", f"--{scope}"], operands=[key, value], cwd=cwd)
    changes = [f"configured filter.theta and merge.theta ({scope})"]
    if repo is not None and with_hooks:
        changes += install_hooks(repo, force=force_hooks)
    return changes


def filter_process_command() -> str:
    """``<python> -S <package>/filter_client.py``, shell-quoted: the client starts in a few
    milliseconds and hands git's pipes to a warm filter server (filter_client.py).

    The interpreter is named by path, as the ``git-theta`` script's own first
    line names it; without one (an embedded interpreter), the script is used.
    """
    if not sys.executable:
        return f"{filter_command()} filter-process"
    client = Path(__file__).resolve().with_name("filter_client.py")
    return f"{shlex.quote(sys.executable)} -S {shlex.quote(str(client))}"


def uninstall(scope: str, repo: GitRepo | None) -> list[str]:
    cwd = _scope_cwd(scope, repo)
    for section in ("filter.theta", "merge.theta"):
        run_git(
            ["config", f"--{scope}", "--remove-section"],
            operands=[section],
            cwd=cwd,
            check=False,
        )
    changes = [f"removed filter.theta and merge.theta ({scope})"]
    if repo is not None:
        changes += uninstall_hooks(repo)
    return changes


def _attributes_file(repo: GitRepo) -> Path:
    return repo.require_worktree("git theta track") / ".gitattributes"


def _line_pattern(line: str) -> str | None:
    """The pattern of a .gitattributes line that routes files through theta."""
    parts = line.split()
    if len(parts) >= 2 and not parts[0].startswith("#") and "filter=theta" in parts[1:]:
        return parts[0]
    return None


def _attributes_text(repo: GitRepo) -> str | None:
    """The work tree's .gitattributes; refused when a commit made it a symbolic link, which
    would take our edits to the file it names, outside the repository."""
    return worktree_attributes_text(repo.require_worktree("git theta track"))


def tracked_patterns(repo: GitRepo) -> list[str]:
    text = _attributes_text(repo) or ""
    return [p for line in text.splitlines() if (p := _line_pattern(line))]


def track(
    repo: GitRepo,
    patterns: list[str],
    *,
    renormalize: bool = False,
    replace_lfs: bool = False,
) -> list[str]:
    """Add ``<pattern> filter=theta diff=theta merge=theta -text`` lines; make sure hooks exist.

    Refuses a pattern that git-lfs (or another filter) tracks, unless
    ``replace_lfs`` swaps git-lfs's line for ours in place. Returns what was
    done, then what to do about files already committed another way (with
    ``renormalize``, they are staged again through theta); see :mod:`.adoption`.
    """
    from .adoption import check_other_filters, check_work_tree_files, guidance, index_versions
    from .adoption import renormalize as renormalize_files

    for pattern in patterns:
        check_pattern(pattern)
    path = _attributes_file(repo)
    text = _attributes_text(repo) or ""
    check_other_filters(repo, text, patterns, {"lfs"} if replace_lfs else set())
    if renormalize:
        check_work_tree_files(repo, patterns)
    existing = set(tracked_patterns(repo))
    changes = []
    for pattern in patterns:
        if pattern in existing:
            changes.append(f"{pattern!r} is already tracked")
            continue
        replaced = replace_lfs and any(
            line.pattern == pattern and line.filter == "lfs" for line in filter_lines(text)
        )
        text = set_filter_line(text, pattern, ATTRIBUTES, {"lfs"} if replace_lfs else ())
        existing.add(pattern)
        changes.append(
            f"tracking {pattern!r} (in place of its git-lfs line)"
            if replaced
            else f"tracking {pattern!r}"
        )
    path.write_text(text)
    changes += install_hooks(repo)
    versions = index_versions(repo, patterns)
    if renormalize:
        renormalize_files(repo, versions.raw + versions.lfs)
    return changes + guidance(versions, patterns, renormalize)


def untrack(repo: GitRepo, patterns: list[str]) -> list[str]:
    path = _attributes_file(repo)
    text = _attributes_text(repo)
    if text is None:
        return [f"{p!r} was not tracked" for p in patterns]
    kept, changes = [], []
    for line in text.splitlines(keepends=True):
        pattern = _line_pattern(line)
        if pattern in patterns:
            changes.append(f"untracked {pattern!r}")
        else:
            kept.append(line)
    path.write_text("".join(kept))
    changes += [f"{p!r} was not tracked" for p in patterns if not any(p in c for c in changes)]
    return changes
