"""`git status` shows no phantom change after any of the operations of item 7.

The template holds one file of each format (torch zip, safetensors, opaque),
in two commits on main and one on a branch.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import (
    assert_status_clean,
    bump_mtime,
    commit_all,
    copy_repo,
    isolated_git_env,
    mlp_checkpoint,
    save,
    sha256_file,
    status_lines,
    tracked_repo,
)
from safetensors.torch import save_file

FILES = ("model.pth", "weights.safetensors", "blob.bin")


def write_version(repo: Path, seed: int) -> dict[str, str]:
    save(mlp_checkpoint(seed), repo / "model.pth")
    torch.manual_seed(seed)
    save_file(
        {"embedding": torch.randn(32, 8), "scale": torch.ones(8, dtype=torch.float16)},
        str(repo / "weights.safetensors"),
    )
    (repo / "blob.bin").write_bytes(os.urandom(4096))
    return {path: sha256_file(repo / path) for path in FILES}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    root = tmp_path_factory.mktemp("status")
    git_env = isolated_git_env(root)
    repo = tracked_repo(git_env, root / "template")
    versions = {}
    for name, seed in (("v1", 1), ("v2", 2)):
        files = write_version(repo, seed)
        versions[name] = (commit_all(git_env, repo, *FILES, message=name), files)
    git_env.git(repo, "switch", "-q", "-c", "other", "HEAD~1")
    files = write_version(repo, 3)
    versions["other"] = (commit_all(git_env, repo, *FILES, message="other"), files)
    git_env.git(repo, "switch", "-q", "main")
    return git_env, repo, versions


@pytest.fixture
def repo_copy(template: tuple, tmp_path: Path) -> tuple:
    git_env, template_repo, versions = template
    return git_env, copy_repo(template_repo, tmp_path / "repo"), versions


def assert_version(repo: Path, files: dict[str, str]) -> None:
    assert {path: sha256_file(repo / path) for path in FILES} == files


def test_status_clean_after_checkout(repo_copy: tuple) -> None:
    git_env, repo, versions = repo_copy
    for name in ("v1", "other"):
        commit, files = versions[name]
        git_env.git(repo, "checkout", "-q", commit)
        assert_version(repo, files)
        assert_status_clean(git_env, repo)
    # Deleted files come back byte-exact and clean too.
    for path in FILES:
        (repo / path).unlink()
    git_env.git(repo, "checkout", "--", *FILES)
    assert_version(repo, versions["other"][1])
    assert_status_clean(git_env, repo)


def test_status_clean_after_branch_switch(repo_copy: tuple) -> None:
    git_env, repo, versions = repo_copy
    for branch, name in (("other", "other"), ("main", "v2"), ("other", "other")):
        git_env.git(repo, "switch", "-q", branch)
        assert_version(repo, versions[name][1])
        assert_status_clean(git_env, repo)


def test_status_clean_after_stash_and_stash_pop(repo_copy: tuple) -> None:
    git_env, repo, versions = repo_copy
    changed = write_version(repo, 4)
    assert sorted(status_lines(git_env, repo)) == [
        " M blob.bin",
        " M model.pth",
        " M weights.safetensors",
    ]
    git_env.git(repo, "stash", "-q")
    assert_version(repo, versions["v2"][1])
    assert_status_clean(git_env, repo)
    git_env.git(repo, "stash", "pop", "-q")
    assert_version(repo, changed)
    # Exactly the real changes, no more.
    assert sorted(status_lines(git_env, repo)) == [
        " M blob.bin",
        " M model.pth",
        " M weights.safetensors",
    ]
    commit_all(git_env, repo, *FILES, message="v3")
    assert_status_clean(git_env, repo)
    assert_version(repo, changed)


def test_status_clean_after_reset_hard(repo_copy: tuple) -> None:
    git_env, repo, versions = repo_copy
    write_version(repo, 5)
    git_env.git(repo, "add", "model.pth")
    git_env.git(repo, "reset", "-q", "--hard")
    assert_version(repo, versions["v2"][1])
    assert_status_clean(git_env, repo)
    git_env.git(repo, "reset", "-q", "--hard", "HEAD~1")
    assert_version(repo, versions["v1"][1])
    assert_status_clean(git_env, repo)


def test_status_clean_after_touch(repo_copy: tuple) -> None:
    git_env, repo, versions = repo_copy
    # The copy has new inodes, so git re-cleans every file once: that must change nothing.
    assert_status_clean(git_env, repo)
    for path in FILES:
        bump_mtime(repo / path)
    assert_status_clean(git_env, repo)
    assert git_env.run("git", "diff", "--quiet", cwd=repo, check=False).returncode == 0
    # Saving the same checkpoint again (new mtime, same bytes) is no change either.
    save(mlp_checkpoint(2), repo / "model.pth")
    bump_mtime(repo / "model.pth", 20)
    assert sha256_file(repo / "model.pth") == versions["v2"][1]["model.pth"]
    assert_status_clean(git_env, repo)
