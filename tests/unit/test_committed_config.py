"""committed_config.py: a committed .thetaconfig, read as git reads config, from its version."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from git_theta_filter.committed_config import normalize_key, read_committed_config
from git_theta_filter.gitrepo import GitRepo


@pytest.mark.parametrize(
    ("key", "normal"),
    [
        ("Theta.Remote.Origin.URL", "theta.Remote.Origin.url"),  # the subsection keeps its case
        ("THETA.remote.origin.Url", "theta.remote.origin.url"),
        ("Core.HooksPath", "core.hookspath"),
    ],
)
def test_normalize_key_lowers_section_and_variable_only(key: str, normal: str) -> None:
    assert normalize_key(key) == normal


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A repository, with git run without the user's or the system's configuration."""
    for key in list(os.environ):
        if key.startswith("GIT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    path = tmp_path / "work"

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=T", "-c", "user.email=t@example.invalid", *args],
            cwd=path,
            check=True,
            capture_output=True,
        )

    path.mkdir()
    git("init", "-q")
    return path, git


def config(path: Path, url: str) -> None:
    (path / ".thetaconfig").write_text(f'[theta "remote.origin"]\n\turl = {url}\n')


def test_the_work_tree_then_the_index_then_head_and_a_given_revision(work) -> None:
    path, git = work
    repo = GitRepo.discover(path)
    assert read_committed_config(repo) is None
    config(path, "s3://committed/x")
    git("add", ".thetaconfig")
    git("commit", "-qm", "config")
    config(path, "s3://staged/x")
    git("add", ".thetaconfig")
    config(path, "s3://edited/x")
    found = read_committed_config(repo)
    assert found is not None and found.where == ".thetaconfig (the work tree)"
    assert found.get("THETA.remote.origin.Url") == "s3://edited/x"
    (path / ".thetaconfig").unlink()
    assert read_committed_config(repo).get("theta.remote.origin.url") == "s3://staged/x"
    git("rm", "-q", "--cached", ".thetaconfig")
    assert read_committed_config(repo).source == "HEAD"
    at_head = read_committed_config(repo, revision="HEAD")
    assert at_head.get_all("theta.remote.origin.url") == ["s3://committed/x"]
    assert read_committed_config(repo, revision="no-such-revision") is None


def test_an_include_is_not_followed_and_bad_syntax_is_one_warning(work, capsys) -> None:
    path, _ = work
    (path / "secret.config").write_text("[theta]\n\tsecret = leaked\n")
    (path / ".thetaconfig").write_text("[include]\n\tpath = secret.config\n[theta]\n\tx = 1\n")
    repo = GitRepo.discover(path)
    found = read_committed_config(repo)
    assert found.get("theta.x") == "1" and found.get("theta.secret") is None
    (path / ".thetaconfig").write_text("[theta\n")
    assert read_committed_config(repo) is None
    assert read_committed_config(repo) is None
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and "not valid git-config syntax" in warnings[0]
