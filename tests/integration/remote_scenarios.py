"""The sharing scenario of docs/remotes.md, run through real git against any kind of store.

A bare repository plus two clones: A commits three checkpoints and pushes; B
clones, checks out each commit and must get byte-exact files; B commits and
pushes; A pulls. Each step asserts on the files, ``git status`` and the store.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from helpers import assert_status_clean, commit_all, mlp_checkpoint, save, sha256_file

MODEL = "model.pth"


def checkpoint(version: int) -> dict[str, torch.Tensor]:
    """Version ``n``: the same small MLP with only its last layer moved,
    so versions share tensors.
    """
    state = mlp_checkpoint(0, sizes=(16, 32, 8))
    state["2.weight"] = state["2.weight"] + version
    return state


@dataclass
class History:
    """Commit id -> sha256 of model.pth at that commit, oldest first."""

    files: dict[str, str] = field(default_factory=dict)


def init_clone(git_env, path: Path, origin: str) -> Path:
    """An empty repository tracking *.pth, with ``origin`` as its remote."""
    git_env.run("git", "init", "-q", str(path))
    git_env.theta(path, "track", "*.pth")
    git_env.git(path, "remote", "add", "origin", origin)
    return path


def commit_versions(
    git_env,
    repo: Path,
    versions: range,
    history: History,
    extra: Callable[[Path], list[str]] | None = None,
) -> None:
    for version in versions:
        digest = save(checkpoint(version), repo / MODEL)
        # An mtime older than the index keeps the entry from being "racily clean",
        # which would make every later git command clean the file again (slow
        # tests); a different second per version keeps versions apart.
        past = time.time() - 1000 + 10 * version
        os.utime(repo / MODEL, (past, past))
        paths = [MODEL, ".gitattributes"] + (
            extra(repo) if extra and version == versions[0] else []
        )
        history.files[commit_all(git_env, repo, *paths, message=f"v{version}")] = digest


def assert_checkouts_byte_exact(git_env, repo: Path, history: History) -> None:
    """Check out every commit, newest (main) last, so the clone ends on its branch."""
    *older, newest = history.files
    for commit in [*older, "main"]:
        git_env.git(repo, "checkout", "-q", commit)
        digest = history.files[newest if commit == "main" else commit]
        assert sha256_file(repo / MODEL) == digest, f"{MODEL} at {commit[:8]} differs"
    assert_status_clean(git_env, repo)


def assert_valid_objects(oids: set[str], read: Callable[[str], bytes]) -> None:
    """Every object hashes to its name."""
    assert oids, "the store is empty"
    for oid in oids:
        assert hashlib.sha256(read(oid)).hexdigest() == oid, f"object {oid} in the store is corrupt"


def run_round_trip(
    git_env,
    tmp_path: Path,
    origin: str,
    *,
    clone_args: tuple[str, ...] = (),
    extra_files: Callable[[Path], list[str]] | None = None,
    pull_with_theta: bool = False,
) -> tuple[Path, Path, History]:
    """The whole scenario; returns clones A and B and the history of model.pth."""
    history = History()
    a = init_clone(git_env, tmp_path / "A", origin)
    commit_versions(git_env, a, range(3), history, extra_files)
    git_env.git(a, "push", "-q", "-u", "origin", "main")

    b = tmp_path / "B"
    git_env.run("git", "clone", "-q", *clone_args, origin, str(b), cwd=tmp_path)
    assert_checkouts_byte_exact(git_env, b, history)

    commit_versions(git_env, b, range(3, 4), history)
    git_env.git(b, "push", "-q", "origin", "main")

    if pull_with_theta:
        # The manifests arrive as they are; `git theta pull` writes the files.
        git_env.git(a, "pull", "-q", "--ff-only", env={"GIT_THETA_SKIP_SMUDGE": "1"})
        git_env.theta(a, "pull")
    else:
        git_env.git(a, "pull", "-q", "--ff-only")
    assert sha256_file(a / MODEL) == list(history.files.values())[-1]
    assert_status_clean(git_env, a)
    return a, b, history
