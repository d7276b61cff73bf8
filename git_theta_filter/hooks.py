"""Installing our git hooks beside the user's and git-lfs's, and running theirs after ours.

The scripts themselves are the files in the top-level ``hooks/`` directory
(a link to the package's ``hook_scripts/``). A hook file is *ours* when it
carries :data:`MARKER`.

* ``pre-push`` is always ours. A hook that is not ours is never overwritten: it
  is renamed to ``pre-push.pre-theta`` and run by ours afterwards, with the
  same arguments and standard input. ``uninstall`` puts it back.
* ``post-checkout``, ``post-commit`` and ``post-merge`` are git-lfs's
  (:mod:`lfs_interop`). We install ours only when the repository uses Git LFS,
  git-lfs is on PATH, and the slot is empty: git-lfs could not install its own
  because our ``pre-push`` was there first. A hook already in such a slot is
  left alone. These three are whole in their shell scripts (git runs them
  after every commit, checkout and merge, and a Python start costs more than
  ``git lfs post-commit``); ``git theta hook post-*`` runs the same script.

A hooks directory that git tracks (``core.hooksPath`` pointing into the work
tree) is the team's shared setup: nothing is written there without
``force``; the line to add is reported instead.
"""

from __future__ import annotations

import os
import re
import subprocess
from importlib import resources
from pathlib import Path

from .gitrepo import GitRepo
from .lfs_interop import (
    LFS_HOOK_NAMES,
    does_lfs_hook_work,
    git_lfs_available,
    lfs_in_use,
    run_lfs_hook,
)

__all__ = [
    "HOOK_NAMES",
    "MARKER",
    "CHAINED_SUFFIX",
    "install_hooks",
    "uninstall_hooks",
    "hooks_installed",
    "run_after_ours",
    "run_chained_hook",
    "run_hook_script",
]

# pre-push first: the order git-lfs installs them in.
HOOK_NAMES = LFS_HOOK_NAMES
ALWAYS = "pre-push"
MARKER = "git-theta-filter hook"
CHAINED_SUFFIX = ".pre-theta"


def _script(name: str) -> str:
    return (resources.files("git_theta_filter") / "hook_scripts" / name).read_text()


def run_hook_script(name: str, args: list[str]) -> int:
    """Run our packaged script of hook ``name`` (a post-* hook, whole in the shell)
    with git's arguments; its exit code. For ``git theta hook``, as a user's hook calls it."""
    if name not in HOOK_NAMES:  # a name of ours, never a value from outside
        raise ValueError(f"not a hook of ours: {name!r}")
    script = resources.files("git_theta_filter") / "hook_scripts" / name
    with resources.as_file(script) as path:
        return subprocess.run(["sh", str(path), *args]).returncode


def _text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _is_ours(path: Path) -> bool:
    return MARKER in (_text(path) or "")


def _calls_us(path: Path, name: str) -> bool:
    """Ours, or a hook of the user's that runs ``git-theta hook <name>`` itself."""
    return re.search(rf"\bgit-theta\s+hook\s+{re.escape(name)}\b", _text(path) or "") is not None


def _call_line(name: str) -> str:
    return f'git-theta hook {name} "$@" || exit $?'


def hooks_installed(repo: GitRepo) -> bool:
    """Whether every hook we would install is in place (git-lfs's slots: filled by anyone)."""
    hooks = repo.hooks_dir()
    if not _calls_us(hooks / ALWAYS, ALWAYS):
        return False
    lfs_slots = [hooks / name for name in HOOK_NAMES if name != ALWAYS]
    return all(slot.exists() for slot in lfs_slots) or not _stand_in_for_lfs(repo)


def _stand_in_for_lfs(repo: GitRepo) -> bool:
    """Whether we fill git-lfs's hook slots: the repository uses it, and git-lfs is here
    to run (a clone without it gets no hooks that would fail every checkout).

    PATH is searched first: where git-lfs is not installed, the check at every
    filter start costs no ``git config`` process."""
    return git_lfs_available() and lfs_in_use(repo)


def _tracked_hooks_dir(repo: GitRepo, hooks: Path) -> str | None:
    """The hooks directory relative to the work tree, when git tracks files in it."""
    if repo.worktree is None:
        return None
    try:
        relative = hooks.resolve().relative_to(repo.worktree.resolve())
    except ValueError:
        return None
    if not repo.git("ls-files", "-z", operands=[str(relative) or "."], check=False):
        return None
    return relative.as_posix()


def install_hooks(repo: GitRepo, *, force: bool = False) -> list[str]:
    """Install or refresh our hooks; returns a line per change made (or advised)."""
    hooks = repo.hooks_dir()
    lfs_slots = [name for name in HOOK_NAMES if name != ALWAYS]
    wanted = [ALWAYS] + (lfs_slots if _stand_in_for_lfs(repo) else [])
    changes = []
    shared: str | None = None
    for name in wanted:
        target = hooks / name
        if _is_ours(target):
            if target.read_text() == _script(name):
                continue
        elif _calls_us(target, name) or (name != ALWAYS and target.exists()):
            continue
        if not force:
            shared = shared or _tracked_hooks_dir(repo, hooks)
            if shared is not None:
                changes.append(
                    f"{shared}/{name}: left alone, as git tracks {shared} (core.hooksPath); "
                    f"add the line `{_call_line(name)}` to it, "
                    "or run `git theta install --force --local` to chain it"
                )
                continue
        hooks.mkdir(parents=True, exist_ok=True)
        if target.exists() and not _is_ours(target):
            chained = hooks / (name + CHAINED_SUFFIX)
            if chained.exists():
                changes.append(f"left {target} alone: {chained.name} already exists")
                continue
            os.replace(target, chained)
            changes.append(f"kept your {name} hook as {chained.name}; it runs after ours")
        tmp = target.with_name(f".{name}.theta-tmp")
        tmp.write_text(_script(name))
        tmp.chmod(0o755)
        os.replace(tmp, target)
        changes.append(f"installed {name} hook")
    return changes


def uninstall_hooks(repo: GitRepo) -> list[str]:
    hooks = repo.hooks_dir()
    changes = []
    for name in HOOK_NAMES:
        target = hooks / name
        chained = hooks / (name + CHAINED_SUFFIX)
        if _is_ours(target):
            target.unlink()
            changes.append(f"removed {name} hook")
            if chained.exists():
                os.replace(chained, target)
                changes.append(f"restored your {name} hook")
    return changes


def run_after_ours(repo: GitRepo, name: str, args: list[str], stdin: bytes) -> int:
    """What ``pre-push`` does after its own work: git-lfs's work when the repository
    uses Git LFS and the hook we replaced does not do it, then that hook. (The
    post-* scripts do the same in the shell.)

    Returns the first non-zero exit code; a failing ``pre-push`` stops there,
    so the push is refused.
    """
    chained = repo.hooks_dir() / (name + CHAINED_SUFFIX)
    code = 0
    if lfs_in_use(repo) and not does_lfs_hook_work(chained, name):
        code = run_lfs_hook(repo, name, args, stdin)
        if code and name == ALWAYS:
            return code
    chained_code = run_chained_hook(repo, name, args, stdin)
    return code or chained_code


def run_chained_hook(repo: GitRepo, name: str, args: list[str], stdin: bytes) -> int:
    """Run the user's original hook, if any; its exit code, or 0 when there is none."""
    chained = repo.hooks_dir() / (name + CHAINED_SUFFIX)
    if not chained.is_file() or not os.access(chained, os.X_OK):
        return 0
    return subprocess.run([str(chained), *args], input=stdin, cwd=repo.cwd).returncode
