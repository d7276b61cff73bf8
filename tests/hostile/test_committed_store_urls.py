"""Class 2 of docs/security.md: a committed .thetaconfig or .lfsconfig does not choose
where the user's credentials and tensors go.

Every place such a file names (a directory store, an ``lfs+http(s)`` store, an
S3 endpoint, ``lfs.url``/``remote.<name>.lfsurl``) goes through
``committed_urls.admit``: used once the user allows it with the one-line
command the refusal prints, or when it is the git remote's own host (LFS) or
AWS's own (S3); the user's own settings always win; a remote whose store is
known keeps it. Nothing here contacts a server: stores are located and opened
(an S3 client is built, which sends nothing), and the endpoints that must not
be used are ports nobody listens on.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import tracked_repo
from lfs_server import free_port
from safetensors.numpy import save_file

from git_theta_filter.gitrepo import GitRepo
from git_theta_filter.remotes import locate_store, resolve_store

REMOTE = "https://git.example.com/org/models.git"
DERIVED = "lfs+https://git.example.com/org/models.git/info/lfs"


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository, git and boto3 isolated from the user's configuration."""
    for key in list(os.environ):
        if key.startswith(("GIT_", "AWS_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    path = tmp_path / "work"
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def commit_config(work: Path, name: str, **values: str) -> None:
    """Write ``name`` as a checkout of someone else's commit leaves it in the work tree."""
    for key, value in values.items():
        git(work, "config", "--file", name, key.replace("__", "."), value)


def notice_then_allow(work: Path, capsys: pytest.CaptureFixture[str], asked: str) -> None:
    """The refusal is one line naming what the file asks for; run the command it gives."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 1, lines
    assert asked in lines[0] and "not used" in lines[0]
    command = re.search(r"To allow it: (git config .*)$", lines[0])
    assert command is not None, lines[0]
    subprocess.run(shlex.split(command.group(1)), cwd=work, check=True)


@pytest.mark.parametrize("spelling", ["absolute path", "relative path", "file URL"])
def test_store_a_committed_directory_outside_the_repository_is_opened_only_once_allowed(
    work, tmp_path, capsys, spelling
):
    private = tmp_path / "another-project" / "objects"
    private.mkdir(parents=True)
    url = {
        "absolute path": str(private),
        "relative path": "../another-project/objects",
        "file URL": private.as_uri(),
    }[spelling]
    commit_config(work, ".thetaconfig", theta__url=url)
    repo = GitRepo.discover(work)
    assert locate_store(repo, "origin", REMOTE).url == DERIVED
    notice_then_allow(work, capsys, str(private))
    assert locate_store(repo, "origin", REMOTE).url == url
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        (".thetaconfig", "theta.url", "lfs+https://collector.evil.example/org/models.git/info/lfs"),
        (".lfsconfig", "lfs.url", "https://collector.evil.example/lfs"),
        (".lfsconfig", "remote.origin.lfsurl", "ssh://git@collector.evil.example/lfs"),
        # The remote's own host, but over plain http where the user chose https.
        (".lfsconfig", "lfs.url", "http://git.example.com/org/models.git/info/lfs"),
        (".thetaconfig", "theta.url", "lfs+http://git.example.com/org/models.git/info/lfs"),
    ],
)
def test_store_a_committed_lfs_server_on_another_host_is_contacted_only_once_allowed(
    work, capsys, name, key, value
):
    commit_config(work, name, **{key.replace(".", "__"): value})
    repo = GitRepo.discover(work)
    assert locate_store(repo, "origin", REMOTE).url == DERIVED
    notice_then_allow(work, capsys, value.removeprefix("lfs+"))
    location = locate_store(repo, "origin", REMOTE)
    assert location.lfs is not None and location.lfs.url != DERIVED.removeprefix("lfs+")


@pytest.mark.parametrize(
    ("remote", "value"),
    [
        (REMOTE, "https://git.example.com/lfs/models"),
        ("git@git.example.com:org/models.git", "ssh://git@git.example.com/org/models.git"),
        ("http://git.example.com/org/models.git", "http://git.example.com/lfs/models"),
    ],
)
def test_store_a_committed_lfs_server_on_the_remotes_own_host_is_used(work, capsys, remote, value):
    commit_config(work, ".lfsconfig", lfs__url=value)
    location = locate_store(GitRepo.discover(work), "origin", remote)
    assert location.lfs is not None
    assert location.lfs.url.split("/")[2] == "git.example.com"
    assert location.lfs.url != DERIVED.removeprefix("lfs+")
    assert capsys.readouterr().err == ""


def _committed_s3(work: Path, endpoint: str) -> None:
    commit_config(
        work, ".thetaconfig", theta__url="s3://team-models/resnet", theta__s3__endpoint=endpoint
    )


def test_store_a_committed_s3_endpoint_is_contacted_only_once_allowed(work, capsys):
    endpoint = f"http://127.0.0.1:{free_port()}"
    _committed_s3(work, endpoint)
    repo = GitRepo.discover(work)
    assert locate_store(repo, "origin", REMOTE).url == DERIVED
    notice_then_allow(work, capsys, endpoint)
    store = resolve_store(repo, "origin", REMOTE)
    assert store.url == "s3://team-models/resnet"
    assert store._client.meta.endpoint_url == endpoint


def test_store_aws_own_endpoint_named_by_a_committed_file_needs_no_allowing(work, capsys):
    _committed_s3(work, "https://s3.eu-west-1.amazonaws.com")
    store = resolve_store(GitRepo.discover(work), "origin", REMOTE)
    assert store._client.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "setting", ["git config", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS config file"]
)
def test_store_the_users_s3_endpoint_wins_over_a_committed_one(
    work, tmp_path, monkeypatch, capsys, setting
):
    _committed_s3(work, f"http://127.0.0.1:{free_port()}")
    mine = "http://minio.mine.example:9000"
    if setting == "git config":
        git(work, "config", "theta.s3.endpoint", mine)
    elif setting == "AWS config file":
        (tmp_path / "aws-config").write_text(f"[default]\nendpoint_url = {mine}\n")
    else:
        monkeypatch.setenv(setting, mine)
    store = resolve_store(GitRepo.discover(work), "origin", REMOTE)
    assert store._client.meta.endpoint_url == mine
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("committed", ["s3://attacker-bucket/drop", "an allowed directory"])
def test_push_a_remote_whose_store_is_known_keeps_it_whatever_the_file_says(
    work, tmp_path, committed
):
    bare = tmp_path / "models.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    git(work, "remote", "add", "origin", str(bare))
    if committed == "an allowed directory":
        committed = str(tmp_path / "elsewhere")
        git(work, "config", "--add", "theta.allowUrl", committed)
    commit_config(work, ".thetaconfig", theta__url=committed)
    repo = GitRepo.discover(work)
    # The path remote's own store, for a push and a fetch alike.
    assert locate_store(repo, "origin").url == str(bare / "theta" / "objects")
    git(work, "config", "theta.remote.origin.url", str(tmp_path / "mine"))
    assert locate_store(repo, "origin").url == str(tmp_path / "mine")


def test_clone_names_the_refused_store_in_one_line_and_never_reads_it(git_env, tmp_path):
    """A clone over a transport with no store of its own; the commit's .thetaconfig names
    another project's store, which holds the objects: they are not read from it."""
    private = tmp_path / "another-project"
    source = tracked_repo(git_env, tmp_path / "source", ("*.safetensors",))
    save_file({"w": np.arange(64, dtype=np.float32)}, str(source / "model.safetensors"))
    git_env.git(source, "config", "--file", ".thetaconfig", "theta.url", str(private))
    git_env.git(source, "add", ".")
    git_env.git(source, "commit", "-qm", "model")
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    git_env.git(source, "config", "theta.remote.origin.url", str(private))
    git_env.git(source, "remote", "add", "origin", str(bare))
    git_env.git(source, "push", "-q", "origin", "main")
    assert any(path.is_file() for path in private.rglob("*"))

    clone = tmp_path / "clone"
    result = git_env.run(
        "git",
        "-c",
        "protocol.ext.allow=always",
        "clone",
        "-q",
        f"ext::git %s {bare}",
        str(clone),
        check=False,
    )
    stderr = result.stderr.decode()
    notices = [line for line in stderr.splitlines() if "which you have not allowed" in line]
    assert len(notices) == 1, stderr
    assert f"git config --add theta.allowUrl {private}" in notices[0]
    assert list((clone / ".git" / "theta").rglob("objects/*/*/*")) == []
    assert not (clone / ".git" / "theta" / "packs").exists() or not any(
        (clone / ".git" / "theta" / "packs").iterdir()
    )


@pytest.mark.parametrize("climb", ["..", "%2e%2e"])
def test_store_a_committed_url_climbing_out_of_an_allowed_place_is_not_allowed(
    work, tmp_path, capsys, climb
):
    """``theta.allowUrl`` allows a place and everything below it; a committed URL whose
    ``..`` leads out of it was let through before (a file:// directory, an LFS path)."""
    team = tmp_path / "team-objects"
    private = tmp_path / "another-project" / "objects"
    for path in (team, private):
        path.mkdir(parents=True)
    git(work, "config", "--add", "theta.allowUrl", str(team))
    git(work, "config", "--add", "theta.allowUrl", "https://lfs.team.example/team")
    repo = GitRepo.discover(work)

    commit_config(
        work, ".thetaconfig", theta__url=f"{team.as_uri()}/{climb}/another-project/objects"
    )
    assert locate_store(repo, "origin", REMOTE).url == DERIVED
    assert f"asks to use {private} as object store" in capsys.readouterr().err

    climbing = f"https://lfs.team.example/team/{climb}/other/models.git/info/lfs"
    commit_config(work, ".thetaconfig", theta__url=f"lfs+{climbing}")
    assert locate_store(repo, "origin", REMOTE).url == DERIVED
    assert "lfs.team.example" in capsys.readouterr().err


def test_store_a_committed_directory_through_a_link_inside_an_allowed_one_is_not_allowed(
    work, tmp_path, capsys
):
    """On a shared disk whoever can write the allowed directory can make a link in it: a
    committed store below it through that link is where the link leads, elsewhere.
    Once the user allows that place itself, it is used."""
    team = tmp_path / "team-objects"
    private = tmp_path / "another-project" / "objects"
    team.mkdir()
    private.mkdir(parents=True)
    (team / "shortcut").symlink_to(private, target_is_directory=True)
    git(work, "config", "--add", "theta.allowUrl", str(team))
    commit_config(work, ".thetaconfig", theta__url=str(team / "shortcut"))
    repo = GitRepo.discover(work)
    assert locate_store(repo, "origin", REMOTE).url == DERIVED
    assert f"asks to use {team / 'shortcut'} as object store" in capsys.readouterr().err
    git(work, "config", "--add", "theta.allowUrl", str(private))
    assert locate_store(repo, "origin", REMOTE).url == str(team / "shortcut")
