"""lfs_interop: the LFS endpoint git-lfs derives from a git URL, and spotting its hooks."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import enter_git_env

from git_theta_filter.gitrepo import GitRepo
from git_theta_filter.lfs_interop import does_lfs_hook_work, lfs_endpoint, run_lfs_hook


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://host/org/repo.git", "https://host/org/repo.git/info/lfs"),
        ("https://host/org/repo", "https://host/org/repo.git/info/lfs"),
        ("https://host/org/repo.git/", "https://host/org/repo.git/info/lfs"),
        ("http://host:8080/repo", "http://host:8080/repo.git/info/lfs"),
        ("ssh://git@host/org/repo.git", "ssh://git@host/org/repo.git"),
        ("git@host:org/repo.git", "git@host:org/repo.git"),
        ("file:///srv/models.git", "file:///srv/models.git"),
        ("/srv/models.git", "file:///srv/models.git"),
        ("../models.git", "file:///work/models.git"),
        ("file://elsewhere/srv/models.git", None),
        ("ftp://host/repo", None),
    ],
)
def test_lfs_endpoint_is_what_git_lfs_derives_from_the_inner_url(
    url: str, endpoint: str | None
) -> None:
    assert lfs_endpoint(url, Path("/work/here")) == endpoint


@pytest.mark.parametrize(
    ("text", "does_it"),
    [
        ('#!/bin/sh\ncommand -v git-lfs >/dev/null\ngit lfs pre-push "$@"\n', True),
        ('#!/bin/sh\nexec git-lfs pre-push "$@"\n', True),
        ('#!/bin/sh\ngit lfs post-checkout "$@"\n', False),
        ("#!/bin/sh\necho mine\n", False),
    ],
)
def test_lfs_hook_work_is_spotted_in_a_chained_hook(
    tmp_path: Path, text: str, does_it: bool
) -> None:
    hook = tmp_path / "pre-push.pre-theta"
    hook.write_text(text)
    assert does_lfs_hook_work(hook, "pre-push") is does_it
    assert not does_lfs_hook_work(tmp_path / "absent", "pre-push")


def test_only_git_lfs_hooks_are_run_as_git_lfs_commands(git_env, tmp_path, monkeypatch) -> None:
    # The name becomes an argument of `git lfs`: a name that is no hook of git-lfs's,
    # an option above all, never reaches it.
    enter_git_env(monkeypatch, git_env.env)
    git_env.run("git", "init", "-q", str(tmp_path / "repo"))
    repo = GitRepo.discover(tmp_path / "repo")
    for name in ("--version", "env"):
        with pytest.raises(ValueError, match=f"not a git-lfs hook: {name!r}"):
            run_lfs_hook(repo, name, [], b"")
