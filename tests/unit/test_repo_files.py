"""repo_files.py: files a repository commits are read inside it only, within a size limit."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pygit2
import pytest

from git_theta_filter.repo_files import (
    UnsafeRepositoryFileError,
    read_tree_file,
    read_worktree_file,
    repository_path_parts,
)

FileMode = pygit2.enums.FileMode


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


def test_read_worktree_file_reports_a_directory_it_may_not_open(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, where permissions never refuse: the refusal is injected. An
    # unreadable directory must not pass for an absent file, which would silently
    # drop the metrics inside it.
    real_open = os.open

    def refuse_runs(path: str, flags: int, *args: object, **kwargs: object) -> int:
        if path == "runs":
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_runs)
    with pytest.raises(PermissionError):
        read_worktree_file(tree, "runs/metrics.json")


@pytest.fixture
def git(tmp_path: Path) -> pygit2.Repository:
    return pygit2.init_repository(tmp_path / "repo.git", bare=True)


def make_tree(git: pygit2.Repository, entries: dict[str, tuple[pygit2.Oid, int]]) -> pygit2.Tree:
    builder = git.TreeBuilder()
    for name, (oid, mode) in entries.items():
        builder.insert(name, oid, mode)
    tree = git[builder.write()]
    assert isinstance(tree, pygit2.Tree)
    return tree


def test_read_tree_file_reads_a_regular_blob(git: pygit2.Repository) -> None:
    blob = git.create_blob(b'{"loss": 0.5}')
    runs = make_tree(git, {"metrics.json": (blob, FileMode.BLOB)})
    root = make_tree(git, {"runs": (runs.id, FileMode.TREE)})
    assert read_tree_file(git, root, "runs/metrics.json") == b'{"loss": 0.5}'


def test_read_tree_file_never_reads_the_target_of_a_committed_symbolic_link(
    git: pygit2.Repository,
) -> None:
    target = git.create_blob(b"/etc/passwd")
    root = make_tree(git, {"metrics.json": (target, FileMode.LINK)})
    with pytest.raises(UnsafeRepositoryFileError, match="metrics.json: is a symbolic link"):
        read_tree_file(git, root, "metrics.json")


def test_read_tree_file_refuses_a_path_through_a_committed_symbolic_link(
    git: pygit2.Repository,
) -> None:
    target = git.create_blob(b"../outside")
    root = make_tree(git, {"runs": (target, FileMode.LINK)})
    with pytest.raises(
        UnsafeRepositoryFileError,
        match="runs/metrics.json: goes through the symbolic link runs",
    ):
        read_tree_file(git, root, "runs/metrics.json")


def test_read_tree_file_refuses_a_submodule(git: pygit2.Repository) -> None:
    # A gitlink names a commit of another repository: nothing here to read.
    commit = git.create_blob(b"stands in for a commit id")
    root = make_tree(git, {"metrics.json": (commit, FileMode.COMMIT)})
    with pytest.raises(UnsafeRepositoryFileError, match="metrics.json: is not a regular file"):
        read_tree_file(git, root, "metrics.json")


def test_read_tree_file_refuses_a_file_mode_entry_that_names_a_tree(
    git: pygit2.Repository,
) -> None:
    # A crafted tree may give any object a file's mode; only a blob is read as one.
    # libgit2's tree builder checks the object's type, so the tree is written raw.
    inner = make_tree(git, {"x": (git.create_blob(b"x"), FileMode.BLOB)})
    raw = b"100644 metrics.json\0" + inner.id.raw
    root = git[git.odb.write(pygit2.enums.ObjectType.TREE, raw)]
    assert isinstance(root, pygit2.Tree)
    with pytest.raises(UnsafeRepositoryFileError, match="metrics.json: is not a regular file"):
        read_tree_file(git, root, "metrics.json")
