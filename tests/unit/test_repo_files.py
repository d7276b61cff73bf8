"""repo_files.py: files a repository commits are read inside it only, within a size limit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from git_theta_filter.repo_files import (
    UnsafeRepositoryFileError,
    read_worktree_file,
    repository_path_parts,
)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "is not a path"),
        ("a\0b", "is not a path"),
        ("/etc/passwd", "is an absolute path"),
        ("metrics/../../secret", "'..' component"),
        ("a//b", "empty"),
        ("./a", "'.'"),
        (".git/config", "inside .git"),
        ("sub/.GIT/config", "inside .git"),  # case-insensitive file systems
    ],
)
def test_repository_path_parts_refuses_what_could_leave_the_repository(
    path: str, reason: str
) -> None:
    with pytest.raises(UnsafeRepositoryFileError, match=reason):
        repository_path_parts(path)


def test_repository_path_parts_splits_a_relative_path() -> None:
    assert repository_path_parts("runs/metrics.json") == ["runs", "metrics.json"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "metrics.json").write_text('{"loss": 0.5}')
    (tmp_path / "file").write_text("x")
    return tmp_path


def test_read_worktree_file_reads_a_regular_file_and_nothing_else(tree: Path) -> None:
    assert read_worktree_file(tree, "runs/metrics.json") == b'{"loss": 0.5}'
    assert read_worktree_file(tree, "runs/absent.json") is None
    assert read_worktree_file(tree, "absent/metrics.json") is None
    assert read_worktree_file(tree, "runs") is None  # a directory
    assert read_worktree_file(tree, "file/metrics.json") is None  # a file where a directory is


def test_read_worktree_file_never_follows_a_symbolic_link(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "secret.json").write_text("secret")
    (tree / "link.json").symlink_to(outside / "secret.json")
    (tree / "linked").symlink_to(outside)
    with pytest.raises(UnsafeRepositoryFileError, match="is a symbolic link"):
        read_worktree_file(tree, "link.json")
    with pytest.raises(UnsafeRepositoryFileError, match="through the symbolic link linked"):
        read_worktree_file(tree, "linked/secret.json")


def test_read_worktree_file_refuses_a_fifo_and_a_file_over_the_limit(tree: Path) -> None:
    os.mkfifo(tree / "pipe")
    with pytest.raises(UnsafeRepositoryFileError, match="not a regular file"):
        read_worktree_file(tree, "pipe")  # opened without blocking: no writer needed
    with pytest.raises(UnsafeRepositoryFileError, match="larger than 4 bytes"):
        read_worktree_file(tree, "runs/metrics.json", limit=4)
