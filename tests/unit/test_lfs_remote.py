"""Which LFS server a remote uses, and the git settings it runs with (lfs_remote.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from git_theta_filter.gitrepo import GitRepo
from git_theta_filter.lfs_remote import (
    GitConfig,
    LfsConfigError,
    http_options_for,
    lfs_endpoint,
    max_object_size,
    open_lfs_store,
)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A repository with no user or system configuration."""
    for key in list(os.environ):
        if key.startswith("GIT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    path = tmp_path / "work"
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


REMOTE = "https://git.example.com/org/models.git"


def test_lfs_endpoint_precedence_lfsurl_then_lfs_url_then_the_remote(work):
    repo = GitRepo.discover(work)
    assert lfs_endpoint(repo, "origin", REMOTE).url == f"{REMOTE}/info/lfs"
    git(work, "config", "lfs.url", "https://lfs.example.com/all")
    assert lfs_endpoint(repo, "origin", REMOTE).url == "https://lfs.example.com/all"
    git(work, "config", "remote.origin.lfsurl", "https://lfs.example.com/origin")
    assert lfs_endpoint(repo, "origin", REMOTE).url == "https://lfs.example.com/origin"
    assert lfs_endpoint(repo, "fork", REMOTE).url == "https://lfs.example.com/all"


def test_lfs_endpoint_from_a_committed_lfsconfig_only_for_the_remotes_own_host(work, capsys):
    repo = GitRepo.discover(work)
    git(work, "config", "--file", ".lfsconfig", "lfs.url", "https://git.example.com/lfs/models")
    endpoint = lfs_endpoint(repo, "origin", REMOTE)
    assert endpoint.url == "https://git.example.com/lfs/models"

    git(work, "config", "--file", ".lfsconfig", "lfs.url", "http://collector.evil.example/lfs")
    endpoint = lfs_endpoint(repo, "origin", REMOTE)
    assert endpoint.url == f"{REMOTE}/info/lfs", "another host named only by the file is not used"
    notice = capsys.readouterr().err
    assert "asks to use http://collector.evil.example/lfs as LFS server (lfs.url)" in notice
    assert "git config --add theta.allowUrl http://collector.evil.example/lfs" in notice


def test_lfs_http_extra_headers_follow_gits_url_matching(work):
    repo = GitRepo.discover(work)
    git(work, "config", "--add", "http.extraHeader", "X-All: 1")
    git(work, "config", "--add", "http.https://git.example.com/.extraHeader", "X-Host: 2")
    git(work, "config", "--add", "http.https://git.example.com/.extraHeader", "X-Host2: 3")
    git(work, "config", "--add", "http.https://*.example.com/other.extraHeader", "X-Other: 4")
    git(work, "config", "--add", "http.https://elsewhere.example/.extraHeader", "X-No: 5")
    options = http_options_for(repo, GitConfig(repo))
    assert options(f"{REMOTE}/info/lfs").extra_headers == (
        ("X-All", "1"),
        ("X-Host", "2"),
        ("X-Host2", "3"),
    )
    assert options("https://cdn.example.com/other/x").extra_headers == (
        ("X-All", "1"),
        ("X-Other", "4"),
    )
    assert options("http://git.example.com/org").extra_headers == (("X-All", "1"),)
    git(work, "config", "--add", "http.https://git.example.com/.extraHeader", "")
    assert http_options_for(repo, GitConfig(repo))(REMOTE).extra_headers == ()


def test_lfs_tls_settings_from_git_config(work, monkeypatch):
    repo = GitRepo.discover(work)
    assert http_options_for(repo, GitConfig(repo))(REMOTE).verify is True
    git(work, "config", "http.https://git.example.com/.sslCAInfo", "/etc/team-ca.pem")
    assert http_options_for(repo, GitConfig(repo))(REMOTE).verify == "/etc/team-ca.pem"
    monkeypatch.setenv("GIT_SSL_NO_VERIFY", "1")
    assert http_options_for(repo, GitConfig(repo))(REMOTE).verify is False


def test_lfs_settings_from_git_config(work):
    repo = GitRepo.discover(work)
    assert max_object_size(GitConfig(repo)) is None
    git(work, "config", "theta.lfs.maxObjectSize", "2g")
    git(work, "config", "lfs.concurrenttransfers", "3")
    git(work, "config", "lfs.transfer.maxretries", "2")
    store = open_lfs_store(repo, lfs_endpoint(repo, "origin", REMOTE))
    assert store.max_object_size == 2 << 30
    assert store.preferred_workers == 3 and store.settings.max_retries == 2
    git(work, "config", "theta.lfs.maxObjectSize", "big")
    with pytest.raises(LfsConfigError, match="theta.lfs.maxObjectSize is 'big'"):
        max_object_size(GitConfig(repo))


def test_lfs_store_url_in_a_committed_thetaconfig_is_used_once_allowed(work):
    from git_theta_filter.remotes import locate_store, resolve_store

    repo = GitRepo.discover(work)
    url = "lfs+http://lfs.example.com/org/models.git/info/lfs"
    git(work, "config", "--file", ".thetaconfig", "theta.url", url)
    assert locate_store(repo, "origin", REMOTE).url == f"lfs+{REMOTE}/info/lfs"
    git(work, "config", "--add", "theta.allowUrl", "http://lfs.example.com/org")
    assert locate_store(repo, "origin", REMOTE).committed
    # Allowed by the user: credentials may go to it, even over http.
    assert resolve_store(repo, "origin", REMOTE).endpoint.user_configured is True
