"""`git theta repack`: what it says it did, in text and in JSON, is what it did."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import local_store
from safetensors.numpy import save as safetensors_save

from git_theta_filter.store import encoded
from git_theta_filter.store.encoded import VERSION_DIGESTED, VERSION_PLAIN


def test_repack_packs_small_objects_and_says_how_many(git_env, repo):
    for seed in range(3):
        small = np.random.default_rng(seed).standard_normal(1000).astype(np.float32)
        local_store(repo).write_bytes(small.tobytes())  # outside a clean: loose
    assert (
        git_env.theta(repo, "repack", "-n")
        .stdout.decode()
        .startswith("would pack 3 objects into one pack")
    )
    report = json.loads(git_env.theta(repo, "repack", "--json").stdout)
    assert (report["packed_objects"], report["loose_removed"], report["dry_run"]) == (3, 3, False)
    assert git_env.theta(repo, "repack").stdout.decode() == "nothing to repack\n"


def test_repack_gives_objects_written_before_block_digests_their_digests(
    git_env, repo, monkeypatch: pytest.MonkeyPatch
):
    """A store written before 2026-12-03 holds large objects of encoded version 1."""
    tensor = np.random.default_rng(0).standard_normal(600_000).astype(np.float32)
    (repo / "model.safetensors").write_bytes(safetensors_save({"w": tensor}))
    with monkeypatch.context() as patch:
        patch.setattr(encoded, "version_for", lambda size: VERSION_PLAIN)
        store = local_store(repo)
        oid = store.write_bytes(tensor.tobytes(), "F32", tensor.shape)
    assert git_env.theta(repo, "repack", "-n").stdout.decode() == (
        "would add block digests to 1 object written before them (docs/store.md, rule 7)\n"
    )
    with store.open_stored(oid) as stored:  # type: ignore[union-attr]
        assert stored.encoded is not None and stored.encoded.version == VERSION_PLAIN
    report = json.loads(git_env.theta(repo, "repack", "--json").stdout)
    assert (report["digested"], report["packed_objects"]) == (1, 0)
    with store.open_stored(oid) as stored:  # type: ignore[union-attr]
        assert stored.encoded is not None and stored.encoded.version == VERSION_DIGESTED
    git_env.theta(repo, "fsck")
    git_env.git(repo, "add", "model.safetensors")  # the same tensor: found, not written again
    git_env.git(repo, "commit", "-qm", "model")
    assert git_env.theta(repo, "repack").stdout.decode() == "nothing to repack\n"
