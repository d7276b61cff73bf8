"""Installing our git hooks beside the user's, and running theirs after ours.

The scripts themselves are the files in the top-level ``hooks/`` directory
(a link to the package's ``hook_scripts/``). A hook file is
ours when it carries :data:`MARKER`. A hook that is not ours is never
overwritten: it is renamed to ``<name>.pre-theta`` and run by ours afterwards,
with the same arguments and standard input. ``uninstall`` puts it back.
"""

from __future__ import annotations

import os
import subprocess
from importlib import resources
from pathlib import Path

from .gitrepo import GitRepo

__all__ = [
    "HOOK_NAMES",
    "MARKER",
    "CHAINED_SUFFIX",
    "install_hooks",
    "uninstall_hooks",
    "hooks_installed",
    "run_chained_hook",
]

HOOK_NAMES = ("pre-push",)
MARKER = "git-theta-filter hook"
CHAINED_SUFFIX = ".pre-theta"


def _script(name: str) -> str:
    return (resources.files("git_theta_filter") / "hook_scripts" / name).read_text()


def _is_ours(path: Path) -> bool:
    try:
        return MARKER in path.read_text(errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return False


def hooks_installed(repo: GitRepo) -> bool:
    hooks = repo.hooks_dir()
    return all(_is_ours(hooks / name) for name in HOOK_NAMES)


def install_hooks(repo: GitRepo) -> list[str]:
    """Install or refresh our hooks; returns a line per change made."""
    hooks = repo.hooks_dir()
    hooks.mkdir(parents=True, exist_ok=True)
    changes = []
    for name in HOOK_NAMES:
        target = hooks / name
        text = _script(name)
        if _is_ours(target):
            if target.read_text() == text:
                continue
        elif target.exists():
            chained = hooks / (name + CHAINED_SUFFIX)
            if chained.exists():
                changes.append(f"left {target} alone: {chained.name} already exists")
                continue
            os.replace(target, chained)
            changes.append(f"kept your {name} hook as {chained.name}; it runs after ours")
        tmp = target.with_name(f".{name}.theta-tmp")
        tmp.write_text(text)
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


def run_chained_hook(repo: GitRepo, name: str, args: list[str], stdin: bytes) -> int:
    """Run the user's original hook, if any; its exit code, or 0 when there is none."""
    chained = repo.hooks_dir() / (name + CHAINED_SUFFIX)
    if not chained.is_file() or not os.access(chained, os.X_OK):
        return 0
    return subprocess.run([str(chained), *args], input=stdin, cwd=repo.cwd).returncode
