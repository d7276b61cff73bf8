"""A damaged copy of an object in the local store, met by `git theta repack` and `gc`.

Repack writes one new pack from whatever copy a lookup finds first (the
loose one), then deletes the packs and loose files it replaced. A copy that
does not hash to its id must not go into that pack: it would stand in for
the good copy being deleted, and `git theta fsck` would then move the new
pack, every small object of the store, to `bad/`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import (
    canonical_bytes,
    local_store,
    mlp_checkpoint,
    read_manifest,
    save,
    tracked_repo,
)

from git_theta_filter.errors import ThetaError

MODEL = "model.pth"


@pytest.fixture
def packed_model(git_env, tmp_path: Path) -> tuple[Path, str]:
    """A repository whose small objects are all in one pack, and one of those objects."""
    repo = tracked_repo(git_env, tmp_path / "repo")
    save({"model": mlp_checkpoint(7, (24, 32, 8))}, repo / MODEL)
    git_env.git(repo, "add", MODEL)
    git_env.git(repo, "commit", "-qm", "model")
    store = local_store(repo)
    manifest = read_manifest(git_env, repo, f"HEAD:{MODEL}")
    victim = {t.name: t.oid for t in manifest.tensors}["model.0.weight"]
    assert victim in store.packed_oids() and not store.object_path(victim).exists()
    return repo, victim


def damaged_loose_copy(repo: Path, oid: str) -> None:
    """A loose copy of a packed object, one payload byte flipped (bit rot after a clean
    that missed the packed copy wrote it loose as well)."""
    store = local_store(repo)
    data = bytearray(canonical_bytes(store, oid))
    data[-1] ^= 0x01
    path = store.object_path(oid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    path.chmod(0o444)


@pytest.mark.parametrize("command", [["repack"], ["gc", "--prune=now"]])
def test_repack_and_gc_never_replace_a_good_packed_copy_with_a_damaged_loose_one(
    git_env, packed_model: tuple[Path, str], command: list[str]
) -> None:
    repo, victim = packed_model
    good = canonical_bytes(local_store(repo), victim)
    # Another pack, so that repack has packs to consolidate.
    save({"model": mlp_checkpoint(8, (24, 32, 8))}, repo / "other.pth")
    git_env.git(repo, "add", "other.pth")
    git_env.git(repo, "commit", "-qm", "other")
    damaged_loose_copy(repo, victim)

    result = git_env.theta(repo, *command, check=False)

    store = local_store(repo)
    packed_good = []
    for pack, index in store.packs().items():
        if index.find(victim) is None:
            continue
        try:
            store.verify_packed(pack, victim)
        except ThetaError:  # a damaged copy
            continue
        packed_good.append(pack)
    assert packed_good, (
        f"`git theta {' '.join(command)}` left no good copy of {victim} "
        f"(exit {result.returncode}): {result.stderr.decode()}"
    )
    assert result.returncode != 0, "repack went on past a damaged copy"
    stderr = result.stderr.decode()
    assert victim in stderr and "git theta fsck" in stderr, stderr

    # fsck moves the damaged loose copy aside; the good packed one then serves, and
    # repack goes through.
    git_env.theta(repo, "fsck", check=False)
    git_env.theta(repo, *command)
    assert canonical_bytes(local_store(repo), victim) == good
    git_env.theta(repo, "fsck")
    assert len(os.listdir(repo / ".git" / "theta" / "packs")) == 2  # one pack and its index
