""".gitattributes lines edited in place, so that a migration and its reverse give the same file."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import enter_git_env, within

from git_theta_filter.attributes import (
    LFS_ATTRIBUTES,
    THETA_ATTRIBUTES,
    BadPatternError,
    FilterAttribute,
    check_pattern,
    filter_lines,
    filters_at,
    remove_filter_line,
    set_filter_line,
)
from git_theta_filter.errors import ThetaError
from git_theta_filter.gitrepo import GitError

LFS_TEXT = (
    "# models\n"
    "*.pth filter=lfs diff=lfs merge=lfs -text\n"
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
    "*.txt text\n"
)


def test_set_filter_line_replaces_the_lfs_line_in_place_and_back() -> None:
    theta = set_filter_line(LFS_TEXT, "*.pth", THETA_ATTRIBUTES, {"lfs"})
    assert theta.splitlines()[1] == f"*.pth {THETA_ATTRIBUTES}"
    assert theta.splitlines()[2:] == LFS_TEXT.splitlines()[2:]
    assert set_filter_line(theta, "*.pth", LFS_ATTRIBUTES, {"theta"}) == LFS_TEXT


def test_set_filter_line_appends_when_no_line_has_the_pattern() -> None:
    assert set_filter_line("", "*.pth", THETA_ATTRIBUTES, {"lfs"}) == f"*.pth {THETA_ATTRIBUTES}\n"
    assert (
        set_filter_line("*.txt text", "*.pth", THETA_ATTRIBUTES, ())
        == f"*.txt text\n*.pth {THETA_ATTRIBUTES}\n"
    )


def test_set_filter_line_drops_duplicate_lines_of_the_pattern() -> None:
    text = "*.pth filter=lfs\n*.pth filter=lfs -text\n"
    assert (
        set_filter_line(text, "*.pth", THETA_ATTRIBUTES, {"lfs"}) == f"*.pth {THETA_ATTRIBUTES}\n"
    )


def test_remove_filter_line_keeps_every_other_line() -> None:
    text = f"*.pth {THETA_ATTRIBUTES}\n*.txt text\n"
    assert remove_filter_line(text, "*.pth", "theta") == "*.txt text\n"
    assert remove_filter_line(text, "*.pth", "lfs") == text
    assert remove_filter_line(f"*.pth {THETA_ATTRIBUTES}\n", "*.pth", "theta") == ""


def test_filter_lines_skips_comments_and_lines_without_a_filter() -> None:
    lines = filter_lines("# *.pth filter=lfs\n*.txt text\n  *.pth   filter=theta\n")
    assert [(line.number, line.pattern, line.filter) for line in lines] == [(2, "*.pth", "theta")]


@pytest.mark.parametrize("pattern", ["", "a b.pth", "a\tb", "#*.pth", "!*.pth"])
def test_check_pattern_refuses_what_a_line_cannot_hold(pattern: str) -> None:
    with pytest.raises(BadPatternError):
        check_pattern(pattern)


@pytest.fixture
def worktree(git_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    enter_git_env(monkeypatch, git_env.env)
    path = tmp_path / "work"
    git_env.run("git", "init", "-q", str(path))
    return path


def test_filters_at_raises_when_git_check_attr_fails(worktree: Path) -> None:
    # git refuses a path outside the work tree and exits with nothing on stdout,
    # which must not read as "no path has a filter".
    with pytest.raises(GitError, match="git check-attr.*outside repository"):
        filters_at(worktree, ["../elsewhere.pth"])


def test_filter_attribute_raises_when_git_check_attr_exits_before_answering(
    worktree: Path,
) -> None:
    attribute = FilterAttribute(worktree)
    try:
        # git reads the path, then exits on it: the answer never comes, and waiting
        # for one must not spin for ever.
        with pytest.raises(ThetaError, match="stopped while reading ../elsewhere.pth"):
            within(10, lambda: attribute("../elsewhere.pth"))
    finally:
        attribute.close()


def test_filter_attribute_raises_the_same_error_when_git_has_already_exited(
    worktree: Path,
) -> None:
    # The next question after git exited meets a pipe with no reader: named as well,
    # not a bare BrokenPipeError.
    attribute = FilterAttribute(worktree)
    try:
        attribute("model.pth")
        assert attribute._process is not None
        attribute._process.kill()
        attribute._process.wait()
        with pytest.raises(ThetaError, match="stopped while reading other.pth"):
            attribute("other.pth")
    finally:
        attribute.close()
