"""Finding the repository, running git, and git configuration.

The theta store lives in the *common* git dir, so every worktree of a
repository shares one store.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ThetaError
from .store.local import LocalStore

__all__ = ["GitError", "NotARepositoryError", "GitRepo", "run_git", "filter_command"]


class GitError(ThetaError):
    """A git command failed."""

    exit_code = 128

    def __init__(self, args: list[str], stderr: str) -> None:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "failed"
        super().__init__(f"`git {' '.join(args)}`: {detail}")
        self.stderr = stderr


class NotARepositoryError(ThetaError):
    exit_code = 128

    def __init__(self, where: Path) -> None:
        super().__init__(f"not a git repository: {where}")


def run_git(
    args: list[str],
    cwd: Path | str | None = None,
    *,
    input: bytes | None = None,
    check: bool = True,
) -> str:
    """Run git and return its stdout as text."""
    result = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True)
    if check and result.returncode != 0:
        raise GitError(args, result.stderr.decode("utf-8", "replace"))
    return result.stdout.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class GitRepo:
    git_dir: Path
    common_dir: Path
    worktree: Path | None

    @classmethod
    def discover(cls, cwd: Path | str | None = None) -> GitRepo:
        # Absolute, so that an error names the directory whatever was passed (`gtf.open('.')`).
        where = Path(os.path.abspath(cwd if cwd is not None else os.getcwd()))
        result = subprocess.run(
            [
                "git",
                "rev-parse",
                "--path-format=absolute",
                "--git-dir",
                "--git-common-dir",
                "--is-bare-repository",
            ],
            cwd=where,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise NotARepositoryError(where)
        git_dir, common_dir, bare = result.stdout.splitlines()
        worktree = None
        if bare != "true":
            top = run_git(["rev-parse", "--show-toplevel"], cwd=where, check=False).strip()
            worktree = Path(top) if top else None
        return cls(Path(git_dir), Path(common_dir), worktree)

    @property
    def theta_dir(self) -> Path:
        return self.common_dir / "theta"

    def store(self) -> LocalStore:
        return LocalStore(self.theta_dir)

    @property
    def cwd(self) -> Path:
        return self.worktree or self.git_dir

    def git(self, *args: str, input: bytes | None = None, check: bool = True) -> str:
        return run_git(list(args), cwd=self.cwd, input=input, check=check)

    def hooks_dir(self) -> Path:
        """Where git looks for hooks, honouring ``core.hooksPath``."""
        path = Path(self.git("rev-parse", "--path-format=absolute", "--git-path", "hooks").strip())
        return path

    def config_get(self, key: str) -> str | None:
        value = self.git("config", "--get", key, check=False).strip()
        return value or None


def filter_command() -> str:
    """How git should start us: by name when ``git-theta`` on PATH is this install.

    Otherwise the script's absolute path, shell-quoted: git runs the
    configured command through the shell, so a path with a space must be quoted.
    """
    on_path = shutil.which("git-theta")
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if on_path and (
        script is None or script.name != "git-theta" or Path(on_path).resolve() == script
    ):
        return "git-theta"
    if script is not None and script.name == "git-theta" and script.exists():
        return shlex.quote(str(script))
    return "git-theta"
