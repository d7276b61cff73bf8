"""Sharing through a Git LFS server: giftless on 127.0.0.1 also serving git over smart HTTP.

The remote is ``http://127.0.0.1:<port>/team/<name>.git``, a whole hosted
repository as on GitHub: git talks to it through ``git http-backend`` and its
LFS endpoint ``…/<name>.git/info/lfs`` is giftless. No store is configured:
the LFS server is the default store of an http(s) remote.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from helpers import sha256_file, store_oids
from lfs_server import LfsServer
from remote_scenarios import (
    MODEL,
    History,
    assert_valid_objects,
    commit_versions,
    init_clone,
    run_round_trip,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = LfsServer(tmp_path_factory.mktemp("lfs-server"), git=True).start()
    yield server
    server.stop()


@pytest.fixture
def hosted(server):
    """A fresh hosted repository: (remote URL, its name)."""
    name = f"models-{uuid.uuid4().hex[:8]}"
    server.bare(name)
    server.reset()
    return server.remote_url(name), name


def test_lfs_round_trip_with_the_store_picked_from_an_http_remote(
    git_env, tmp_path, server, hosted
):
    url, name = hosted
    # B gets the files by lazy fetch on checkout; A pulls with `git theta pull`.
    a, b, history = run_round_trip(git_env, tmp_path, url, pull_with_theta=True)
    stored = server.stored(name)
    assert_valid_objects(set(stored), stored.__getitem__)
    local = store_oids(a)
    assert local <= set(stored), "every object A has must be on the LFS server"
    assert not list((b / ".git" / "theta" / "tmp").glob("download-*"))


def test_lfs_push_of_a_fine_tune_uploads_only_the_changed_tensors(
    git_env, tmp_path, server, hosted
):
    url, name = hosted
    a = init_clone(git_env, tmp_path / "A", url)
    commit_versions(git_env, a, range(1), History())
    first = git_env.run("git", "push", "-u", "origin", "main", cwd=a).stderr.decode()
    assert f"to lfs+{server.endpoint(name)}" in first, first
    before = set(server.stored(name))
    uploads = server.count("upload")

    # Version 1 changes one tensor (2.weight): its object and the skeleton are new.
    commit_versions(git_env, a, range(1, 2), History())
    second = git_env.run("git", "push", "origin", "main", cwd=a).stderr.decode()
    added = set(server.stored(name)) - before
    assert len(added) == 2, f"expected the changed tensor and the skeleton, got {len(added)}"
    assert server.count("upload") - uploads == 2
    assert server.count("verify") >= 2
    assert "uploaded 2 tensor objects" in second, second

    # Nothing new: a push of the same commits uploads nothing.
    uploads = server.count("upload")
    git_env.theta(a, "push", "origin")
    assert server.count("upload") == uploads


def test_lfs_fetch_all_and_lazy_checkout_of_old_commits(git_env, tmp_path, server, hosted):
    url, name = hosted
    a = init_clone(git_env, tmp_path / "A", url)
    history = History()
    commit_versions(git_env, a, range(3), history)
    git_env.git(a, "push", "-q", "-u", "origin", "main")

    b = tmp_path / "B"
    git_env.run("git", "clone", "-q", url, str(b), env={"GIT_THETA_SKIP_SMUDGE": "1"})
    git_env.theta(b, "fetch", "--all")
    local = store_oids(b)
    assert local == set(server.stored(name))
    # Every version now checks out with no server at all.
    git_env.git(b, "config", "remote.origin.lfsurl", "http://127.0.0.1:9/nowhere.git/info/lfs")
    for commit, digest in history.files.items():
        git_env.git(b, "checkout", "-q", commit)
        assert sha256_file(b / MODEL) == digest


def test_lfs_server_killed_mid_push_moves_no_ref(git_env, tmp_path):
    server = LfsServer(tmp_path / "dying", git=True).start()
    try:
        url = server.remote_url()
        server.bare()
        a = init_clone(git_env, tmp_path / "A", url)
        commit_versions(git_env, a, range(1), History())
        git_env.git(a, "config", "lfs.transfer.maxretries", "1")
        git_env.git(a, "config", "lfs.transfer.maxretrydelay", "0")
        server.control(hang_upload=True)
        push = subprocess.Popen(
            ["git", "push", "origin", "main"],
            cwd=a,
            env=git_env.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # The hook's first upload hangs in the server; then the server dies under it.
        deadline = time.monotonic() + 60
        while not (server.root / "upload-started").exists():
            assert time.monotonic() < deadline and push.poll() is None, "no upload started"
            time.sleep(0.05)
    finally:
        server.kill()
    _, stderr = push.communicate(timeout=120)
    assert push.returncode != 0
    assert "refusing to push to 'origin'" in stderr.decode(), stderr.decode()
    assert git_env.git(server.bare(), "for-each-ref") == "", "a ref moved"
    assert not list((a / ".git" / "theta" / "tmp").glob("*"))


def test_lfs_through_the_theta_remote_helper(git_env, tmp_path, server, hosted):
    url, name = hosted
    run_round_trip(git_env, tmp_path, f"theta::{url}")
    stored = server.stored(name)
    assert_valid_objects(set(stored), stored.__getitem__)
    assert server.count("upload") == len(stored)


def test_lfs_objects_gc_deleted_locally_come_back_from_the_server(
    git_env, tmp_path, server, hosted
):
    url, _ = hosted
    a = init_clone(git_env, tmp_path / "A", url)
    commit_versions(git_env, a, range(1), History())
    git_env.git(a, "push", "-q", "-u", "origin", "main")
    git_env.git(a, "checkout", "-q", "-b", "scratch")
    history = History()
    commit_versions(git_env, a, range(5, 6), history)
    git_env.git(a, "push", "-q", "origin", "scratch")
    git_env.git(a, "checkout", "-q", "main")
    git_env.git(a, "branch", "-q", "-D", "scratch")
    git_env.git(a, "update-ref", "-d", "refs/remotes/origin/scratch")
    git_env.git(a, "reflog", "expire", "--expire=now", "--all")
    git_env.theta(a, "gc", "--prune=now")
    ((commit, digest),) = history.files.items()
    git_env.git(a, "fetch", "-q", "origin", "scratch")
    git_env.git(a, "checkout", "-q", commit)
    assert sha256_file(a / MODEL) == digest


def test_lfs_push_refuses_an_object_over_theta_lfs_max_object_size(
    git_env, tmp_path, server, hosted
):
    url, name = hosted
    a = init_clone(git_env, tmp_path / "A", url)
    commit_versions(git_env, a, range(1), History())
    git_env.git(a, "config", "theta.lfs.maxObjectSize", "1k")
    result = git_env.run("git", "push", "origin", "main", cwd=a, check=False)
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert re.search(r"refusing to upload (tensor '[^']+' of )?model\.pth \(", stderr), stderr
    assert "it is over theta.lfs.maxObjectSize (" in stderr, stderr
    assert git_env.git(server.bare(name), "for-each-ref") == ""
    assert server.stored(name) == {}


def test_lfs_objects_theta_uploaded_are_fetched_by_git_lfs_itself(
    git_env, tmp_path, server, hosted
):
    url, name = hosted
    a = init_clone(git_env, tmp_path / "A", url)
    commit_versions(git_env, a, range(1), History())
    git_env.git(a, "push", "-q", "-u", "origin", "main")
    oid, data = max(server.stored(name).items(), key=lambda item: len(item[1]))

    plain = tmp_path / "plain-lfs"
    git_env.run("git", "init", "-q", str(plain))
    (plain / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    (plain / "tensor.bin").write_text(
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n"
    )
    git_env.git(plain, "add", ".gitattributes", "tensor.bin")
    git_env.git(plain, "commit", "-qm", "a pointer to theta's object")
    git_env.git(plain, "config", "lfs.url", server.endpoint(name))
    git_env.run("git", "lfs", "fetch", cwd=plain)
    fetched = plain / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    assert fetched.read_bytes() == data


HELPER = """#!/bin/sh
here=$(dirname "$0")
echo "$1" >> "$here/log"
cat > /dev/null
if [ "$1" = get ]; then
    echo username=tester
    echo "password=$(cat "$here/password")"
fi
"""


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    server = LfsServer(tmp_path_factory.mktemp("lfs-auth"), auth="tester:pw-7c41", git=True)
    yield server.start()
    server.stop()


def credential_helper(folder: Path, password: str) -> Path:
    folder.mkdir()
    script = folder / "helper.sh"
    script.write_text(HELPER)
    script.chmod(0o755)
    (folder / "password").write_text(password)
    return script


def test_lfs_credentials_come_from_git_credential_and_are_approved(git_env, tmp_path, auth_server):
    name = f"auth-{uuid.uuid4().hex[:8]}"
    auth_server.bare(name)
    auth_server.reset()
    helper = credential_helper(tmp_path / "helper", "pw-7c41")
    a = init_clone(git_env, tmp_path / "A", auth_server.remote_url(name))
    git_env.git(a, "config", "credential.helper", str(helper))
    git_env.git(a, "config", f"http.{auth_server.base}/.extraHeader", "X-Theta-Test: yes")
    commit_versions(git_env, a, range(1), History())
    git_env.git(a, "push", "-q", "origin", "main")
    assert (tmp_path / "helper" / "log").read_text().split() == ["get", "store"]
    batches = [entry for entry in auth_server.stats() if entry["kind"] == "batch"]
    assert not batches[0]["authorization"], "the first request goes without credentials"
    assert all(entry["authorized"] for entry in batches[1:])
    assert {entry["extra_header"] for entry in auth_server.stats()} == {"yes"}
    assert set(auth_server.stored(name)) == store_oids(a)


def test_lfs_wrong_password_is_a_clean_401_and_git_credential_reject(
    git_env, tmp_path, auth_server
):
    name = f"auth-{uuid.uuid4().hex[:8]}"
    auth_server.bare(name)
    helper = credential_helper(tmp_path / "helper", "pw-wrong-93d2")
    a = init_clone(git_env, tmp_path / "A", auth_server.remote_url(name))
    git_env.git(a, "config", "credential.helper", str(helper))
    commit_versions(git_env, a, range(1), History())
    result = git_env.run("git", "push", "origin", "main", cwd=a, check=False)
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert "refusing to push to 'origin'" in stderr
    assert "batch request was refused with HTTP 401: Credentials needed" in stderr, stderr
    assert "Traceback" not in stderr and "pw-wrong-93d2" not in stderr
    assert (tmp_path / "helper" / "log").read_text().split() == ["get", "erase"]
    assert git_env.git(auth_server.bare(name), "for-each-ref") == ""

    # No helper and no terminal: git's own refusal, named.
    git_env.git(a, "config", "--unset", "credential.helper")
    result = git_env.run(
        "git", "push", "origin", "main", cwd=a, check=False, env={"GIT_TERMINAL_PROMPT": "0"}
    )
    assert result.returncode != 0
    assert "no credentials: `git credential fill` failed" in result.stderr.decode()


# Stands in for ssh to a hosting site: git's own commands run locally on the
# path, and git-lfs-authenticate answers as GitHub's does, with the LFS href
# and a header for the batch API.
FAKE_SSH = """#!/bin/sh
here=$(dirname "$0")
while [ $# -gt 0 ]; do
    case "$1" in
        -p) echo "port $2" >> "$here/ssh.log"; shift 2 ;;
        -o) shift 2 ;;
        --) shift; break ;;
        -*) shift ;;
        *) break ;;
    esac
done
host=$1
shift
echo "$host $*" >> "$here/ssh.log"
case "$*" in
    git-lfs-authenticate*)
        printf '{"href": "%s", "header": {"X-Theta-Test": "ssh"}}' "$LFS_HREF" ;;
    *) exec sh -c "$*" ;;
esac
"""


def test_lfs_over_an_ssh_remote_asks_git_lfs_authenticate(git_env, tmp_path, server, hosted):
    _, name = hosted
    ssh = tmp_path / "ssh" / "fake-ssh"
    ssh.parent.mkdir()
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    env = {"GIT_SSH_COMMAND": str(ssh), "GIT_SSH_VARIANT": "ssh", "LFS_HREF": server.endpoint(name)}
    git_env.env.update(env)
    url = f"ssh://git@models.example:2222{server.bare(name)}"
    run_round_trip(git_env, tmp_path, url)

    log = (tmp_path / "ssh" / "ssh.log").read_text().splitlines()
    path = str(server.bare(name)).lstrip("/")
    assert f"git@models.example git-lfs-authenticate {path} upload" in log
    assert f"git@models.example git-lfs-authenticate {path} download" in log
    assert "port 2222" in log
    batches = [entry for entry in server.stats() if entry["kind"] == "batch"]
    assert batches and {entry["extra_header"] for entry in batches} == {"ssh"}
    stored = server.stored(name)
    assert_valid_objects(set(stored), stored.__getitem__)
