"""``git theta track`` in repositories that already have models: raw files, git-lfs, globs."""

from __future__ import annotations

import pytest
from adoption_history import Adopted, adopted_history

from git_theta_filter.manifest import Manifest

THETA_LINE = "*.pth filter=theta diff=theta merge=theta -text"
LFS_LINE = "*.pth filter=lfs diff=lfs merge=lfs -text"


@pytest.fixture
def raw(tmp_path_factory: pytest.TempPathFactory) -> Adopted:
    return adopted_history(tmp_path_factory, "raw")


@pytest.fixture
def lfs(tmp_path_factory: pytest.TempPathFactory) -> Adopted:
    return adopted_history(tmp_path_factory, "lfs")


def test_track_names_files_already_committed_raw_and_the_next_step(raw: Adopted) -> None:
    code, out, err = raw.theta("track", "*.pth")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "tracking '*.pth'"
    assert (
        "model.pth is already committed as a plain file, so this line changes nothing for it "
        "until it is added again." in lines
    )
    assert (
        "To store it through theta, stage it again and commit (or run this command with "
        "--renormalize): git add .gitattributes && git add --renormalize -- model.pth && "
        'git commit -m "Store models with git-theta"' in lines
    )
    assert lines[-1] == (
        "Its older versions stay as they are in history; theta-log and theta-diff read them. "
        "To rewrite history too: git theta migrate import --include='*.pth' --everything "
        "(see docs/migrate.md)."
    )
    # The printed step does what it says.
    raw.git("add", ".gitattributes")
    raw.git("add", "--renormalize", "--", "model.pth")
    Manifest.parse(raw.git("cat-file", "blob", ":model.pth").encode())


def test_track_renormalize_stages_the_files_through_theta(raw: Adopted) -> None:
    code, out, err = raw.theta("track", "--renormalize", "*.pth")
    assert code == 0, err
    assert (
        "Staged model.pth again through theta (git add --renormalize); commit it: "
        'git commit -m "Store models with git-theta"' in out.splitlines()
    )
    assert sorted(raw.git("diff", "--cached", "--name-only").split()) == [
        ".gitattributes",
        "model.pth",
    ]
    Manifest.parse(raw.git("cat-file", "blob", ":model.pth").encode())
    raw.git("commit", "-qm", "Store models with git-theta")
    assert raw.git("status", "--porcelain") == ""


def test_track_is_quiet_about_files_already_in_theta(raw: Adopted) -> None:
    raw.theta("track", "--renormalize", "*.pth")
    raw.git("commit", "-qm", "Store models with git-theta")
    code, out, _err = raw.theta("track", "*.pth")
    assert out.splitlines() == ["'*.pth' is already tracked"]


def test_track_refuses_a_pattern_git_lfs_tracks(lfs: Adopted) -> None:
    before = (lfs.repo / ".gitattributes").read_text()
    code, out, err = lfs.theta("track", "*.pth", check=False)
    assert code == 1 and out == ""
    assert err.strip() == (
        "git-theta: error: '*.pth' is tracked by git-lfs (model.pth). A file goes through one "
        "filter only, so a theta line as well would silently take these files away from "
        "git-lfs; to convert the history too, run `git theta migrate import --include='*.pth' "
        "--everything` (it rewrites commits; see docs/migrate.md); to switch from the next "
        "commit on, run `git theta track --replace-lfs '*.pth'`"
    )
    assert (lfs.repo / ".gitattributes").read_text() == before


def test_track_refuses_files_git_lfs_tracks_under_another_pattern(lfs: Adopted) -> None:
    code, _out, err = lfs.theta("track", "model.*", check=False)
    assert code == 1
    assert "'model.*' is tracked by git-lfs (model.pth)" in err


def test_track_replace_lfs_swaps_the_line_and_explains(lfs: Adopted) -> None:
    assert (lfs.repo / ".gitattributes").read_text() == LFS_LINE + "\n"
    code, out, err = lfs.theta("track", "--replace-lfs", "*.pth")
    assert code == 0, err
    assert (lfs.repo / ".gitattributes").read_text() == THETA_LINE + "\n"
    lines = out.splitlines()
    assert lines[0] == "tracking '*.pth' (in place of its git-lfs line)"
    assert (
        "model.pth is committed as a git-lfs pointer. Checking out such a version reads its "
        "object from .git/lfs/objects (`git lfs fetch --all` downloads them all), or fails "
        "with an error; it never writes the pointer as the model." in lines
    )
    assert any(line.startswith("To store it through theta") for line in lines)


def test_track_warns_about_file_names_from_an_unquoted_glob(raw: Adopted) -> None:
    (raw.repo / "other.pth").write_bytes(b"")
    code, out, err = raw.theta("track", "model.pth", "other.pth")
    assert code == 0
    assert err.strip() == (
        "git-theta: warning: model.pth and other.pth are names of existing files, not a "
        "pattern: did the shell expand an unquoted glob? Each name is tracked as given, so "
        "files added later are not. To track every such file, quote the pattern: "
        "git theta track '*.pth'"
    )
    assert out.splitlines()[:2] == ["tracking 'model.pth'", "tracking 'other.pth'"]


def test_track_does_not_warn_about_a_quoted_pattern(raw: Adopted) -> None:
    code, _out, err = raw.theta("track", "*.pth")
    assert code == 0 and err == ""


@pytest.mark.parametrize("pattern", ["my model.pth", "#x", "!*.pth"])
def test_track_refuses_what_a_gitattributes_line_cannot_hold(raw: Adopted, pattern: str) -> None:
    code, _out, err = raw.theta("track", pattern, check=False)
    assert code == 2
    assert "as a .gitattributes pattern" in err
    assert not (raw.repo / ".gitattributes").exists()


def test_track_renormalize_refuses_a_pointer_in_the_work_tree(lfs: Adopted) -> None:
    """Without its git-lfs object the work tree holds the pointer text: never store that."""
    pointer = lfs.git("cat-file", "blob", "HEAD:model.pth")
    (lfs.repo / "model.pth").write_text(pointer)
    code, _out, err = lfs.theta("track", "--replace-lfs", "--renormalize", "*.pth", check=False)
    assert code == 1
    assert "model.pth in the work tree is a git-lfs pointer, not the model" in err
    assert lfs.git("cat-file", "blob", ":model.pth") == pointer  # nothing staged
    assert (lfs.repo / ".gitattributes").read_text() == LFS_LINE + "\n"
