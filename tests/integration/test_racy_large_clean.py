"""A large file git cleans again with its work-tree copy unchanged (docs/store.md,
"Clean cache" rule 4), through real git: `git commit` after a racy `git add`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from helpers import assert_status_clean, large_safetensors_bytes

from git_theta_filter.manifest import Manifest


def filter_starts(trace: Path) -> int:
    lines = trace.read_text().splitlines()
    return sum("run_command:" in line and "filter" in line for line in lines)


@pytest.fixture
def added(git_env, repo: Path) -> Path:
    """A large model file, added."""
    path = repo / "big.safetensors"
    path.write_bytes(large_safetensors_bytes(0))
    git_env.git(repo, "add", "big.safetensors")
    return path


def test_git_commit_after_a_racy_add_of_a_large_file_commits_what_the_add_staged(
    git_env, repo: Path, added: Path
) -> None:
    staged = git_env.git(repo, "rev-parse", ":big.safetensors")
    # The index no newer than the file, by the second: git cleans the file again.
    mtime = added.stat().st_mtime_ns
    os.utime(repo / ".git" / "index", ns=(mtime, mtime))
    trace = repo.parent / "trace.txt"
    git_env.git(repo, "commit", "-qm", "large", env={"GIT_TRACE": str(trace)})
    assert filter_starts(trace) == 1
    assert git_env.git(repo, "rev-parse", "HEAD:big.safetensors") == staged
    assert_status_clean(git_env, repo)
    assert not list((repo / ".git" / "theta" / "tmp").iterdir())


def test_other_bytes_hashed_under_an_unchanged_large_file_get_their_own_manifest(
    git_env, repo: Path, added: Path
) -> None:
    other = large_safetensors_bytes(1)
    blob = git_env.run(
        "git", "hash-object", "-w", "--stdin", "--path=big.safetensors", cwd=repo, input=other
    ).stdout.decode()
    manifest = Manifest.parse(git_env.run("git", "cat-file", "blob", blob.strip(), cwd=repo).stdout)
    assert manifest.sha256 == hashlib.sha256(other).hexdigest()
    assert manifest.size == len(other)
