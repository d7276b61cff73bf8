"""``git theta commit``: stage in-process and commit with no filter process at all."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import (
    assert_manifest,
    assert_status_clean,
    mlp_checkpoint,
    read_manifest,
    save,
    sha256_file,
    status_lines,
)


def _no_filter_process(git_env, repo: Path) -> None:
    """From here on, any filter process git starts fails loudly."""
    git_env.git(repo, "config", "filter.theta.process", "sh -c 'echo filter started >&2; exit 3'")


def test_commit_each_step_without_starting_the_filter(git_env, repo: Path) -> None:
    _no_filter_process(git_env, repo)
    hashes = []
    for step in range(3):
        hashes.append(save(mlp_checkpoint(step), repo / "model.pth"))
        git_env.theta(repo, "commit", "-m", f"step {step}", "model.pth")
        manifest = read_manifest(git_env, repo, "HEAD:model.pth")
        assert_manifest(manifest, format="torch-zip", file=repo / "model.pth")
    log = git_env.git(repo, "log", "--format=%s").split("\n")
    assert log[:3] == ["step 2", "step 1", "step 0"]
    reflog = git_env.git(repo, "reflog", "-1", "--format=%gs").strip()
    assert reflog == "commit: step 2"
    git_env.git(repo, "config", "--unset", "filter.theta.process")
    git_env.git(repo, "config", "filter.theta.process", "git-theta filter-process")
    git_env.git(repo, "checkout", "-q", "HEAD~2")
    assert sha256_file(repo / "model.pth") == hashes[0]
    assert_status_clean(git_env, repo)


def test_a_file_changed_after_the_commit_is_never_taken_for_the_committed_one(
    git_env, repo: Path
) -> None:
    save(mlp_checkpoint(0), repo / "model.pth")
    git_env.theta(repo, "commit", "-m", "first", "model.pth")
    before = (repo / "model.pth").stat()
    # Same size, written at once: the racy-clean check, not the size, must catch it.
    save(mlp_checkpoint(1), repo / "model.pth")
    after = (repo / "model.pth").stat()
    assert after.st_size == before.st_size
    os.utime(repo / "model.pth", ns=(after.st_atime_ns, before.st_mtime_ns))
    assert status_lines(git_env, repo) == [" M model.pth"]


def test_add_then_commit_a_file_rewritten_with_the_same_stat_is_never_the_cached_one(
    git_env, repo: Path
) -> None:
    """The filter's clean cache is keyed by the bytes git sends, not by the file's stat: a
    file rewritten after a racy `git add` with the same size, inode and mtime (and ctime
    not trusted) is cleaned as what it now holds."""
    git_env.git(repo, "config", "core.trustctime", "false")
    path = repo / "model.pth"
    save(mlp_checkpoint(0), path)
    racy = path.stat().st_mtime_ns + 3600 * 10**9  # later than any index written meanwhile
    os.utime(path, ns=(racy, racy))
    git_env.git(repo, "add", "model.pth")
    before = path.stat()
    new_hash = save(mlp_checkpoint(1), path)
    os.utime(path, ns=(racy, racy))
    after = path.stat()
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (
        before.st_size,
        before.st_ino,
        before.st_mtime_ns,
    )
    git_env.git(repo, "commit", "-qm", "first")  # re-cleans the racy entry: the cache misses
    assert status_lines(git_env, repo) == [" M model.pth"]
    git_env.git(repo, "commit", "-qam", "second")
    path.unlink()
    git_env.git(repo, "checkout", "--", "model.pth")
    assert sha256_file(path) == new_hash


def test_commit_refuses_a_file_that_is_not_tracked(git_env, repo: Path) -> None:
    (repo / "notes.txt").write_text("hello\n")
    result = git_env.theta(repo, "commit", "-m", "notes", "notes.txt", check=False)
    assert result.returncode == 1
    assert b"notes.txt is not tracked by git-theta" in result.stderr
    assert b"git theta track '*.txt'" in result.stderr
    assert git_env.git(repo, "log", "--format=%s").splitlines() == ["track models"]
