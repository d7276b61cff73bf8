"""Sharing through a Git LFS server: giftless on 127.0.0.1 also serving git over smart HTTP.

The remote is ``http://127.0.0.1:<port>/team/<name>.git``, a whole hosted
repository as on GitHub: git talks to it through ``git http-backend`` and its
LFS endpoint ``…/<name>.git/info/lfs`` is giftless. No store is configured:
the LFS server is the default store of an http(s) remote.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from helpers import sha256_file
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
    a, b, history = run_round_trip(git_env, tmp_path, url)
    stored = server.stored(name)
    assert_valid_objects(set(stored), stored.__getitem__)
    local = {path.name for path in (a / ".git" / "theta" / "objects").glob("*/*/*")}
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
    local = {path.name for path in (b / ".git" / "theta" / "objects").glob("*/*/*")}
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
