"""A small training history for the theta-log and theta-diff tests.

Three commits of a nested checkpoint of a ``torch.nn`` model, in which known
tensors change by known amounts:

====  =======================================================  ======================
epoch  change against the previous epoch                        files
====  =======================================================  ======================
1      (first version)                                          model.pth
2      every element of ``model.0.weight`` + 0.5                 model.pth, results.toml
3      ``model.2.bias[0]`` + 2.0                                 model.pth, model.pth.metrics.json
====  =======================================================  ======================

The history is built once per test module (module-scoped fixtures) and
copied for tests that change it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import GitEnv, isolated_git_env

CHANGED_IN = {2: {"model.0.weight"}, 3: {"model.2.bias"}}
TENSOR_NAMES = {"model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias"}


def make_git_env(root: Path) -> GitEnv:
    """conftest's ``git_env``, for a module-scoped fixture; commits here set their own dates."""
    git_env = isolated_git_env(root / "home")
    for fixed in ("GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE"):
        del git_env.env[fixed]
    return git_env


def new_repo(git_env: GitEnv, path: Path) -> Path:
    git_env.run("git", "init", "-q", str(path))
    git_env.theta(path, "track", "*.pth", "*.safetensors")
    commit(git_env, path, "track models", ".gitattributes", day=1)
    return path


def commit(git_env: GitEnv, repo: Path, message: str, *paths: str, day: int) -> str:
    """Add ``paths`` (if any) and commit at a distinct date,
    so that history order is unambiguous.
    """
    date = f"2026-01-{day:02d}T12:00:00Z"
    dates = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    if paths:
        git_env.run("git", "add", "--", *paths, cwd=repo, env=dates)
    git_env.run("git", "commit", "-qm", message, cwd=repo, env=dates)
    return git_env.git(repo, "rev-parse", "HEAD").strip()


def model_at(epoch: int) -> torch.nn.Sequential:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        if epoch >= 2:
            model[0].weight += 0.5
        if epoch >= 3:
            model[2].bias[0] += 2.0
    return model


def checkpoint_at(epoch: int) -> dict:
    """A nested checkpoint: the state_dict under ``model``, scalars at several depths."""
    return {
        "model": model_at(epoch).state_dict(),
        "epoch": epoch,
        "metrics": {"val_acc": 0.5 + 0.1 * epoch, "train": {"loss": round(1.0 / epoch, 6)}},
        "config": {"lr": 0.01, "use_amp": False},
    }


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


@contextmanager
def _inside(env: dict[str, str], cwd: Path) -> Iterator[None]:
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)


@dataclass
class History:
    git_env: GitEnv
    repo: Path
    commits: dict[int, str] = field(default_factory=dict)  # epoch -> commit id
    states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def run(
        self,
        *args: str,
        check: bool = True,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        return self.git_env.run(*args, cwd=cwd or self.repo, check=check, env=env)

    def json(self, *args: str) -> dict:
        return json.loads(self.run(*args).stdout)

    def theta(self, command: str, *args: str, cwd: Path | None = None) -> Result:
        """``git theta-<command> args`` run in this process (no interpreter start-up),
        as the script would.
        """
        from git_theta_filter.cli import diff, log

        main = {"log": log.main, "diff": diff.main}[command]
        stdout, stderr = io.StringIO(), io.StringIO()
        with (
            _inside(self.git_env.env, cwd or self.repo),
            redirect_stdout(stdout),
            redirect_stderr(stderr),
        ):
            code = main(list(args))
        return Result(code, stdout.getvalue(), stderr.getvalue())

    def theta_ok(self, command: str, *args: str) -> str:
        result = self.theta(command, *args)
        assert result.returncode == 0, (
            f"git theta-{command} {' '.join(args)} failed:\n{result.stderr}"
        )
        return result.stdout

    def theta_json(self, command: str, *args: str) -> dict:
        return json.loads(self.theta_ok(command, "--json", *args))

    def copy(self, dest: Path) -> History:
        """An independent copy, store and stats cache included."""
        shutil.copytree(self.repo, dest, symlinks=True)
        return History(self.git_env, dest, dict(self.commits), dict(self.states))


def build_history(git_env: GitEnv, repo: Path) -> History:
    history = History(git_env, new_repo(git_env, repo))
    for epoch in (1, 2, 3):
        checkpoint = checkpoint_at(epoch)
        torch.save(checkpoint, repo / "model.pth")
        history.states[epoch] = {f"model.{k}": v.clone() for k, v in checkpoint["model"].items()}
        paths = ["model.pth"]
        if epoch == 2:
            (repo / "results.toml").write_text("[test]\nbleu = 21.5\n")
            git_env.theta(repo, "metrics", "add", "results.toml")
            paths += ["results.toml", ".thetaconfig"]
        if epoch == 3:
            (repo / "model.pth.metrics.json").write_text(
                json.dumps({"eval": {"f1": 0.75, "per_class": [0.7, 0.8]}})
            )
            (repo / "results.toml").write_text("[test]\nbleu = 24.0\n")
            paths += ["model.pth.metrics.json", "results.toml"]
        history.commits[epoch] = commit(git_env, repo, f"epoch {epoch}", *paths, day=epoch + 1)
    return history


_built: History | None = None


def shared_history(tmp_path_factory: pytest.TempPathFactory, name: str) -> History:
    """A copy of the history, which is built once per test session (it takes seconds)."""
    global _built
    if _built is None:
        root = tmp_path_factory.mktemp("theta-history")
        _built = build_history(make_git_env(root), root / "repo")
    return _built.copy(tmp_path_factory.mktemp(name) / "repo")


def norm(tensor: torch.Tensor) -> float:
    return torch.linalg.vector_norm(tensor.double()).item()
