""".gitattributes lines edited in place, so that a migration and its reverse give the same file."""

from __future__ import annotations

import pytest

from git_theta_filter.attributes import (
    LFS_ATTRIBUTES,
    THETA_ATTRIBUTES,
    BadPatternError,
    check_pattern,
    filter_lines,
    remove_filter_line,
    set_filter_line,
)

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
