"""Where a remote's store is (remotes.py) and opening the store a URL names (store/remote.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from git_theta_filter.gitrepo import GitRepo
from git_theta_filter.remotes import StoreConfigError, locate_store, transfer_workers
from git_theta_filter.store.base import UnsupportedStoreURLError
from git_theta_filter.store.directory import DirectoryStore
from git_theta_filter.store.remote import open_store


@pytest.fixture
def isolated_git(tmp_path, monkeypatch):
    """git with no user or system configuration, outside any repository."""
    for key in list(os.environ):
        if key.startswith("GIT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)

    def git(cwd: Path, *args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
        ).stdout

    return git


def test_store_precedence_config_then_local_remote_then_thetaconfig(isolated_git, tmp_path):
    bare = tmp_path / "models.git"
    isolated_git(tmp_path, "init", "-q", "--bare", str(bare))
    work = tmp_path / "work"
    isolated_git(tmp_path, "init", "-q", str(work))
    isolated_git(work, "remote", "add", "origin", "../models.git")
    repo = GitRepo.discover(work)

    location = locate_store(repo, "origin")
    assert location is not None and location.url == str(bare / "theta" / "objects")
    assert location.anchor == bare

    (work / ".thetaconfig").write_text("[theta]\n\turl = s3://team-models/resnet\n")
    isolated_git(work, "add", ".thetaconfig")
    isolated_git(work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "store")
    # A path remote's store is known: a committed file does not move it (docs/security.md).
    assert locate_store(repo, "origin").url == str(bare / "theta" / "objects")
    # A remote with no store of its own takes the committed one.
    https = "https://example.com/models.git"
    assert locate_store(repo, "origin", https).url == "s3://team-models/resnet"
    # Committed but gone from the work tree (a bare-like checkout): read from HEAD.
    (work / ".thetaconfig").unlink()
    isolated_git(work, "rm", "-q", "--cached", ".thetaconfig")
    assert locate_store(repo, "origin", https).url == "s3://team-models/resnet"

    isolated_git(work, "config", "theta.remote.origin.url", "/srv/objects")
    assert locate_store(repo, "origin").url == "/srv/objects"
    assert locate_store(repo, "origin", https).url == "/srv/objects"


def test_default_store_of_local_remotes(isolated_git, tmp_path):
    other = tmp_path / "other"
    isolated_git(tmp_path, "init", "-q", str(other))
    work = tmp_path / "work"
    isolated_git(tmp_path, "init", "-q", str(work))
    repo = GitRepo.discover(work)
    for url in (str(other), other.as_uri(), f"theta::{other}"):
        assert locate_store(repo, "origin", url).url == str(other / ".git" / "theta" / "objects")
    assert locate_store(repo, "origin", str(tmp_path / "nowhere")) is None
    # An http(s) or ssh remote's store is its Git LFS server.
    for url, store in (
        ("git@example.com:team/models.git", "lfs+https://example.com/team/models.git/info/lfs"),
        ("https://example.com/models.git", "lfs+https://example.com/models.git/info/lfs"),
        ("https://example.com/models", "lfs+https://example.com/models.git/info/lfs"),
    ):
        assert locate_store(repo, "origin", url).url == store


def test_store_urls_and_transfer_setting(isolated_git, tmp_path):
    work = tmp_path / "work"
    isolated_git(tmp_path, "init", "-q", str(work))
    repo = GitRepo.discover(work)
    assert isinstance(open_store("file:///srv/objects", base=work), DirectoryStore)
    assert open_store("objects", base=work).root == work / "objects"
    with pytest.raises(UnsupportedStoreURLError, match="https://example.com/objects"):
        open_store("https://example.com/objects", base=work)
    assert transfer_workers(repo) == 8
    isolated_git(work, "config", "theta.transfers", "3")
    assert transfer_workers(repo) == 3
    isolated_git(work, "config", "theta.transfers", "many")
    with pytest.raises(StoreConfigError, match="theta.transfers is 'many'"):
        transfer_workers(repo)
