"""revisions.py: git's range grammar, pathspecs, and telling revisions from paths."""

from __future__ import annotations

from pathlib import Path

import pygit2
import pytest

from git_theta_filter.revisions import (
    AmbiguousArgumentError,
    BadRevisionError,
    PathNotTrackedError,
    Pathspec,
    range_sides,
    split_arguments,
)


@pytest.mark.parametrize(
    ("argument", "sides"),
    [
        ("main..topic", ("main", "topic", False)),
        ("main...topic", ("main", "topic", True)),
        ("..topic", ("HEAD", "topic", False)),
        ("main...", ("main", "HEAD", True)),
        ("v1.0", None),
    ],
)
def test_range_sides_reads_a_range_as_git_does(argument: str, sides: object) -> None:
    assert range_sides(argument) == sides


def test_a_pathspec_is_relative_to_the_top_from_a_subdirectory(tmp_path: Path) -> None:
    spec = Pathspec(["model.pth", "ckpt/*.pt"], tmp_path / "models", tmp_path)
    assert spec.match("models/model.pth")
    assert spec.match("models/ckpt/step-1.pt")
    assert not spec.match("model.pth")
    assert not spec.match("models/model.pth.bak")


def test_a_directory_pathspec_covers_what_is_under_it_only(tmp_path: Path) -> None:
    spec = Pathspec(["models"], tmp_path, tmp_path)
    assert spec.match("models/a.pth") and spec.match("models")
    assert not spec.match("models-old/a.pth")
    assert Pathspec(["."], tmp_path, tmp_path).match("anything/at/all.pth")


def test_no_pathspec_matches_everything(tmp_path: Path) -> None:
    spec = Pathspec([], tmp_path, tmp_path)
    assert not spec and spec.match("a.pth")


def test_a_pathspec_outside_the_work_tree_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PathNotTrackedError, match=r"\.\./elsewhere\.pth"):
        Pathspec(["../elsewhere.pth"], tmp_path, tmp_path)


def test_check_tracked_names_the_argument_that_matches_no_model(tmp_path: Path) -> None:
    spec = Pathspec(["a.pth", "missing/"], tmp_path, tmp_path)
    with pytest.raises(PathNotTrackedError, match="missing/"):
        spec.check_tracked(["a.pth", "b.pth"])
    Pathspec(["*.pth"], tmp_path, tmp_path).check_tracked(["a.pth"])


@pytest.fixture
def no_commits(tmp_path: Path) -> pygit2.Repository:
    """A repository where no argument names a revision."""
    return pygit2.init_repository(tmp_path / "repo")


def test_before_a_separator_only_revisions_may_stand(
    no_commits: pygit2.Repository, tmp_path: Path
) -> None:
    # With `--`, what precedes it must be a revision, even when a file has that name.
    (tmp_path / "model.pth").write_bytes(b"")
    with pytest.raises(BadRevisionError, match="bad revision 'model.pth'"):
        split_arguments(no_commits, ["model.pth"], [], tmp_path)


def test_without_a_separator_an_argument_that_is_neither_revision_nor_file_is_ambiguous(
    no_commits: pygit2.Repository, tmp_path: Path
) -> None:
    with pytest.raises(AmbiguousArgumentError, match="ambiguous argument 'typo.pth'"):
        split_arguments(no_commits, ["typo.pth"], None, tmp_path)
    (tmp_path / "model.pth").write_bytes(b"")
    assert split_arguments(no_commits, ["model.pth"], None, tmp_path) == ([], ["model.pth"])
