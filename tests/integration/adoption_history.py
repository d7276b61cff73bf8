"""Repositories that had models before theta: a raw history and a git-lfs history.

Both hold the same ten commits. Each commit writes ``model.pth`` (ten
tensors, of which exactly one, 10%, differs from the previous commit's, plus
the scalars ``epoch`` and ``metrics.loss``) and changes ``notes.txt``, a
file that is not a model. In the raw history both are plain blobs; in the
git-lfs history ``*.pth`` is tracked by git-lfs 3.3 and pushed to a bare
repository on a local path (``origin``), which git-lfs serves without a
server.

Each history is built once per session and copied per test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import GitEnv, isolated_git_env

EPOCHS = range(1, 11)
TENSORS = 10
SHAPE = (128, 128)


def state_at(epoch: int) -> dict[str, torch.Tensor]:
    """Ten tensors; at epoch k the tensor ``k % 10`` is new (one in ten changes per commit)."""
    state = {
        f"layer{i}.weight": torch.randn(SHAPE, generator=torch.Generator().manual_seed(1000 + i))
        for i in range(TENSORS)
    }
    for step in range(1, epoch + 1):
        generator = torch.Generator().manual_seed(step)
        state[f"layer{step % TENSORS}.weight"] = torch.randn(SHAPE, generator=generator)
    return state


def checkpoint_at(epoch: int) -> dict:
    return {"model": state_at(epoch), "epoch": epoch, "metrics": {"loss": round(1.0 / epoch, 6)}}


@dataclass
class Adopted:
    """A repository with model history from before theta, and what each commit held."""

    git_env: GitEnv
    repo: Path
    commits: dict[int, str] = field(default_factory=dict)  # epoch -> commit id
    files: dict[int, dict[str, str]] = field(default_factory=dict)  # epoch -> path -> sha256
    origin: Path | None = None

    def git(self, *args: str, check: bool = True, cwd: Path | None = None) -> str:
        return self.git_env.run("git", *args, cwd=cwd or self.repo, check=check).stdout.decode()

    def theta(self, *args: str, check: bool = True) -> tuple[int, str, str]:
        result = self.git_env.run("git", "theta", *args, cwd=self.repo, check=check)
        return result.returncode, result.stdout.decode(), result.stderr.decode()

    def copy(self, dest: Path) -> Adopted:
        """An independent copy (with its own origin, when it has one)."""
        shutil.copytree(self.repo, dest / "repo", symlinks=True)
        origin = None
        if self.origin is not None:
            origin = dest / "origin.git"
            shutil.copytree(self.origin, origin, symlinks=True)
            self.git_env.run("git", "remote", "set-url", "origin", str(origin), cwd=dest / "repo")
        return Adopted(self.git_env, dest / "repo", dict(self.commits), dict(self.files), origin)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_dir_bytes(repo: Path) -> int:
    """The bytes of every file under ``.git`` (apparent sizes, not disk blocks)."""
    total = 0
    for root, _dirs, names in os.walk(repo / ".git"):
        for name in names:
            path = Path(root) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total


def _dated(epoch: int) -> dict[str, str]:
    date = f"2026-02-{epoch:02d}T12:00:00Z"
    return {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}


def _build(git_env: GitEnv, repo: Path, lfs: bool) -> Adopted:
    git_env.run("git", "init", "-q", str(repo))
    history = Adopted(git_env, repo)
    if lfs:
        git_env.run("git", "lfs", "track", "*.pth", cwd=repo)
    for epoch in EPOCHS:
        torch.save(checkpoint_at(epoch), repo / "model.pth")
        (repo / "notes.txt").write_text(f"notes of epoch {epoch}\n")
        git_env.run("git", "add", "-A", cwd=repo, env=_dated(epoch))
        git_env.run(
            "git",
            "-c",
            f"user.name=Author {epoch}",
            "commit",
            "-qm",
            f"epoch {epoch}\n\nbody of {epoch}",
            cwd=repo,
            env=_dated(epoch),
        )
        history.commits[epoch] = git_env.git(repo, "rev-parse", "HEAD").strip()
        history.files[epoch] = {name: sha256(repo / name) for name in ("model.pth", "notes.txt")}
    if lfs:
        origin = repo.parent / "origin.git"
        git_env.run("git", "init", "-q", "--bare", str(origin))
        git_env.run("git", "remote", "add", "origin", str(origin), cwd=repo)
        git_env.run("git", "push", "-q", "origin", "main", cwd=repo)
        git_env.run("git", "fetch", "-q", "origin", cwd=repo)
        history.origin = origin
    return history


def make_env(root: Path) -> GitEnv:
    """conftest's isolated environment, with git-lfs installed in it (global, in its HOME)."""
    git_env = isolated_git_env(root / "home")
    git_env.run("git", "lfs", "install", cwd=git_env.home)
    return git_env


_built: dict[str, Adopted] = {}


def adopted_history(tmp_path_factory: pytest.TempPathFactory, kind: str) -> Adopted:
    """A copy of the ``raw`` or ``lfs`` history, built once per session."""
    if kind not in _built:
        root = tmp_path_factory.mktemp(f"adopted-{kind}")
        (root / "work").mkdir()
        _built[kind] = _build(make_env(root), root / "work" / "repo", lfs=kind == "lfs")
    return _built[kind].copy(tmp_path_factory.mktemp(f"{kind}-copy"))
