"""Files that `git theta show -o` and `git theta log --plot` write, where a commit put a
symbolic link (docs/security.md, class 3).

A collaborator can commit ``plots/`` or ``history.png`` as a link to anywhere
(``../../.bashrc``); the user then names that path. The output is written to a
temporary file beside it and renamed into place, never through a link, and a
file that is not a regular one (a FIFO, a device, a folder, a link) is refused
rather than replaced.
"""

from __future__ import annotations

import os

import pytest
from helpers import commit_all, mlp_checkpoint, save

OUTSIDE_TEXT = "the user's own file, outside the repository\n"


@pytest.fixture
def committed(git_env, repo, tmp_path):
    """``repo`` with one model version and two committed links: ``plots`` to a folder
    outside and ``history.png`` to a file outside."""
    save(mlp_checkpoint(0), repo / "model.pth")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "bashrc").write_text(OUTSIDE_TEXT)
    (repo / "plots").symlink_to(outside)
    (repo / "history.png").symlink_to(outside / "bashrc")
    commit_all(git_env, repo, "model.pth", "plots", "history.png", message="v0")
    return repo, outside


def _untouched(outside):
    assert sorted(p.name for p in outside.iterdir()) == ["bashrc"]
    assert (outside / "bashrc").read_text() == OUTSIDE_TEXT


@pytest.mark.parametrize(
    "command",
    [
        ["show", "HEAD:model.pth", "-o", "plots/model.pth"],
        ["show", "HEAD:model.pth", "-o", "history.png"],
        ["log", "--plot", "plots/history.png"],
        ["log", "--plot", "history.png"],
    ],
    ids=["show-folder-link", "show-file-link", "plot-folder-link", "plot-file-link"],
)
def test_output_is_never_written_through_a_committed_link(git_env, committed, command):
    if command[0] == "log":
        pytest.importorskip("matplotlib")
    repo, outside = committed
    result = git_env.theta(repo, *command, check=False, timeout=60)
    assert result.returncode != 0
    assert "symbolic link" in result.stderr.decode(), result.stderr
    _untouched(outside)
    assert (repo / "history.png").is_symlink()


@pytest.mark.parametrize("command", [["show", "HEAD:model.pth", "-o"], ["log", "--plot"]])
def test_output_refuses_a_fifo_or_a_folder(git_env, committed, tmp_path, command):
    """A FIFO was replaced (show) or blocked the command for ever (--plot)."""
    if command[0] == "log":
        pytest.importorskip("matplotlib")
    repo, _ = committed
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    for target in (fifo, folder):
        result = git_env.theta(repo, *command, str(target), check=False, timeout=60)
        assert result.returncode != 0
        assert f"{target}: is not a regular file" in result.stderr.decode(), result.stderr
    assert fifo.is_fifo() and folder.is_dir()
