"""Four `git add` at once, in four worktrees of one repository,
sharing one store and most tensors.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch
from helpers import assert_status_clean, object_path, read_manifest, sha256_file, store_oids

MODEL = "model.pth"
WORKERS = 4


def checkpoint(worker: int) -> dict[str, torch.Tensor]:
    """Shared tensors (a few MB each, so the writes overlap in time) and one of the worker's own."""
    shared = {f"shared.{i}": torch.full((1_000_000,), float(i)) for i in range(4)}
    return {**shared, "own": torch.full((1000,), float(100 + worker))}


def test_four_concurrent_adds_in_four_worktrees_all_succeed(
    git_env, repo: Path, tmp_path: Path
) -> None:
    trees = [repo]
    for worker in range(1, WORKERS):
        tree = tmp_path / f"wt{worker}"
        git_env.git(repo, "worktree", "add", "-q", "-b", f"worker{worker}", str(tree))
        trees.append(tree)
    digests = []
    for worker, tree in enumerate(trees):
        torch.save(checkpoint(worker), tree / MODEL)
        digests.append(sha256_file(tree / MODEL))

    adds = [
        subprocess.Popen(
            ["git", "add", MODEL],
            cwd=tree,
            env=git_env.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for tree in trees
    ]
    results = [(add.communicate(timeout=120)[1].decode(), add.returncode)[::-1] for add in adds]
    assert results == [(0, "")] * WORKERS

    manifests = [read_manifest(git_env, tree, f":{MODEL}") for tree in trees]
    shared_oids = [
        {t.name: t.oid for t in m.tensors if t.name.startswith("shared.")} for m in manifests
    ]
    assert all(oids == shared_oids[0] for oids in shared_oids), (
        "equal tensors got different objects"
    )
    own = {next(t.oid for t in m.tensors if t.name == "own") for m in manifests}
    assert len(own) == WORKERS
    # One store for all worktrees: 4 shared tensors, 4 own ones and 4 skeletons, each whole.
    assert store_oids(repo) == set().union(*(m.object_ids() for m in manifests))
    assert len(store_oids(repo)) == 4 + WORKERS + WORKERS
    for oid in store_oids(repo):
        assert sha256_file(object_path(repo, oid)) == oid

    for worker, tree in enumerate(trees):
        git_env.git(tree, "commit", "-qm", f"worker {worker}")
        (tree / MODEL).unlink()
        git_env.git(tree, "checkout", "--", MODEL)
        assert sha256_file(tree / MODEL) == digests[worker]
        assert_status_clean(git_env, tree)
    git_env.theta(repo, "fsck", "--all")
