"""prepush.py: git's pre-push hook input, as githooks(5) defines it."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import (
    commit_all,
    enter_git_env,
    mlp_checkpoint,
    remove_local_objects,
    save,
    store_oids,
)

from git_theta_filter.gitrepo import GitRepo
from git_theta_filter.prepush import (
    ObjectsMissingLocallyError,
    RefUpdate,
    parse_ref_updates,
    upload_for_push,
)
from git_theta_filter.remotes import NoStoreError, require_store

ZERO = "0" * 40
A = "a" * 40
B = "b" * 40


def test_parse_ref_updates_reads_one_update_a_line() -> None:
    # <local ref> SP <local sha> SP <remote ref> SP <remote sha> LF
    stdin = f"refs/heads/main {A} refs/heads/main {B}\nrefs/tags/v1 {B} refs/tags/v1 {ZERO}\n"
    assert parse_ref_updates(stdin.encode()) == [
        RefUpdate("refs/heads/main", A, "refs/heads/main", B),
        RefUpdate("refs/tags/v1", B, "refs/tags/v1", ZERO),
    ]


def test_parse_ref_updates_skips_what_is_not_an_update() -> None:
    assert parse_ref_updates(b"") == []
    assert parse_ref_updates(f"\nnot an update\nrefs/heads/x {A} refs/heads/x\n".encode()) == []


def test_a_delete_pushes_the_zero_id() -> None:
    (delete,) = parse_ref_updates(f"(delete) {ZERO} refs/heads/old {A}\n".encode())
    assert delete.is_delete
    assert not RefUpdate("refs/heads/main", A, "refs/heads/main", ZERO).is_delete
    # sha256 repositories push 64 zeros.
    assert RefUpdate("(delete)", "0" * 64, "refs/heads/old", "c" * 64).is_delete


def test_a_push_to_a_remote_without_a_store(git_env, repo: Path, monkeypatch) -> None:
    """Nothing is uploaded, unless the caller needs a store; and never when this clone
    lacks objects the pushed commits name, which no one could then get."""
    enter_git_env(monkeypatch, git_env.env)
    save(mlp_checkpoint(), repo / "model.pth")
    head = commit_all(git_env, repo, "model.pth")
    updates = [RefUpdate("refs/heads/main", head, "refs/heads/main", ZERO)]
    git_repo = GitRepo.discover(repo)
    stored = store_oids(repo)
    uploaded = upload_for_push(git_repo, "nowhere", None, updates)
    assert (uploaded.wanted, uploaded.store_url) == (len(stored), None)
    with pytest.raises(NoStoreError, match="no object store for remote 'nowhere'"):
        upload_for_push(git_repo, "nowhere", None, updates, require_store=True)
    with pytest.raises(NoStoreError, match="no object store for remote 'nowhere'"):
        require_store(git_repo, "nowhere")
    remove_local_objects(repo)
    with pytest.raises(ObjectsMissingLocallyError, match="are not in the local store") as caught:
        upload_for_push(git_repo, "nowhere", None, updates)
    assert set(caught.value.oids) == stored
