"""Class 1 of docs/security.md: a URL or remote name from outside never reaches git as an option.

The attack: a remote URL ``theta::--upload-pack=<command>`` (in a config,
a script, a README's clone line) used to reach ``git ls-remote`` and
``git fetch`` as an option, so the command ran as soon as the repository had
any local or ssh remote to talk to. Two guards close it: the helper refuses a
URL or remote name that begins with ``-`` (as git does for ssh since
CVE-2017-1000117), and every git command line puts such values after ``--``
or ``--end-of-options`` (``tests/unit/test_git_arguments.py`` checks every call).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from git_theta_filter.gitrepo import GitError, GitRepo
from git_theta_filter.remote_helper import RemoteHelper, main


@pytest.fixture
def clone(git_env, tmp_path: Path) -> Path:
    """A clone whose origin is a local path: a remote git would run --upload-pack for."""
    source = tmp_path / "source"
    git_env.run("git", "init", "-q", str(source))
    git_env.git(source, "commit", "-q", "--allow-empty", "-m", "first")
    git_env.run("git", "clone", "-q", str(source), str(tmp_path / "clone"))
    return tmp_path / "clone"


def _commands(marker: Path) -> list[str]:
    """Spellings of "run a command" that git's transports take as options."""
    touch = f"touch {marker}"
    return [
        f"--upload-pack={touch};git-upload-pack",
        f"-u{touch};git-upload-pack",
        f"--receive-pack={touch};git-receive-pack",
        f"--exec={touch};git-receive-pack",
    ]


@pytest.mark.parametrize("spelling", range(4))
def test_fetch_pull_push_refuse_a_theta_url_that_is_an_option(git_env, clone, tmp_path, spelling):
    marker = tmp_path / "pwned"
    url = f"theta::{_commands(marker)[spelling]}"
    git_env.git(clone, "remote", "add", "evil", url)
    for command in (
        ["git", "fetch", url],
        ["git", "fetch", "evil"],
        ["git", "pull", "evil", "main"],
        ["git", "push", url, "HEAD:refs/heads/x"],
        ["git", "push", "evil", "HEAD:refs/heads/x"],
        ["git", "ls-remote", "evil"],
    ):
        result = git_env.run(*command, cwd=clone, check=False)
        assert result.returncode != 0, command
        assert "begins with '-'" in result.stderr.decode(), (command, result.stderr)
        assert not marker.exists(), f"{command} ran the attacker's command"


def test_clone_refuses_a_theta_url_that_is_an_option(git_env, clone, tmp_path):
    marker = tmp_path / "pwned"
    # Run from inside a repository with a local origin, where ls-remote would fall back to it.
    result = git_env.run(
        "git",
        "clone",
        f"theta::--upload-pack=touch {marker};git-upload-pack",
        str(tmp_path / "new"),
        cwd=clone,
        check=False,
    )
    assert result.returncode != 0 and "begins with '-'" in result.stderr.decode()
    assert not marker.exists()


@pytest.mark.parametrize(
    "argv", [["--upload-pack=touch x", "/some/repo"], ["origin", "-oProxyCommand=touch x"]]
)
def test_remote_helper_refuses_a_remote_name_or_url_that_begins_with_a_dash(
    clone, monkeypatch, capsys, argv
):
    monkeypatch.chdir(clone)
    monkeypatch.delenv("GIT_THETA_REMOTE_HELPER", raising=False)
    assert main(argv) == 128
    assert "begins with '-'" in capsys.readouterr().err


def test_remote_helper_passes_an_option_like_url_to_git_as_a_url_not_an_option(clone, tmp_path):
    """The second guard alone: with the refusal bypassed, git still reads the URL as a URL."""
    marker = tmp_path / "pwned"
    url = f"--upload-pack=touch {marker};git-upload-pack"
    stdout = io.BytesIO()
    helper = RemoteHelper(GitRepo.discover(clone), "evil", url, io.BytesIO(b"list\n"), stdout)
    with pytest.raises(GitError):
        helper.serve()
    result = helper._git("fetch", "--quiet", "--stdin", operands=[url], input=b"")
    assert result.returncode != 0
    assert not marker.exists()
