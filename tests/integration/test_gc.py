"""gc: frees exactly the objects no manifest needs, never one that is still reachable."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import torch
from helpers import local_store, store_oids

from git_theta_filter.locks import writer_lock


def save_model(path: Path, seed: int, changed_layer: int | None = None) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 4)
    )
    if changed_layer is not None:
        with torch.no_grad():
            model[changed_layer].weight.add_(float(seed))
    torch.save(model.state_dict(), path)


def gc_json(git_env, repo: Path, *args: str) -> dict:
    return json.loads(git_env.theta(repo, "gc", "--json", *args).stdout)


def test_gc_frees_exactly_a_deleted_branchs_unique_objects(git_env, repo):
    save_model(repo / "model.pth", 0)
    git_env.git(repo, "add", "model.pth")
    git_env.git(repo, "commit", "-qm", "base")
    before = store_oids(repo)

    git_env.git(repo, "checkout", "-qb", "experiment")
    save_model(repo / "model.pth", 5, changed_layer=2)
    git_env.git(repo, "commit", "-qam", "experiment")
    branch_only = store_oids(repo) - before
    branch_bytes = sum(local_store(repo).size(oid) for oid in branch_only)
    # One changed tensor (model 2.weight) plus the new skeleton.
    assert len(branch_only) == 2

    git_env.git(repo, "checkout", "-q", "main")
    git_env.git(repo, "branch", "-qD", "experiment")
    # Still reachable through the reflog: nothing may go.
    assert gc_json(git_env, repo, "--prune=now")["deleted"] == []

    git_env.git(repo, "reflog", "expire", "--expire=now", "--all")
    report = gc_json(git_env, repo, "--prune=now")
    assert set(report["deleted"]) == branch_only
    assert report["freed_bytes"] == branch_bytes
    assert store_oids(repo) == before
    git_env.theta(repo, "fsck", "--all")


def test_gc_dry_run_and_grace_period_delete_nothing(git_env, repo):
    save_model(repo / "model.pth", 0)
    git_env.git(repo, "add", "model.pth")
    git_env.git(repo, "commit", "-qm", "base")
    save_model(repo / "model.pth", 1, changed_layer=0)
    git_env.git(repo, "add", "model.pth")  # objects written, then abandoned
    git_env.git(repo, "reset", "-q", "--hard")
    everything = store_oids(repo)

    dry = gc_json(git_env, repo, "--dry-run", "--prune=now")
    assert len(dry["deleted"]) == 2 and dry["dry_run"] is True
    assert store_oids(repo) == everything

    recent = gc_json(git_env, repo)  # default 2.weeks.ago: the abandoned objects are new
    assert recent["deleted"] == [] and recent["kept_recent"] == 2
    assert store_oids(repo) == everything


def test_gc_keeps_objects_of_the_stash_and_of_other_worktrees(git_env, repo, tmp_path):
    save_model(repo / "model.pth", 0)
    git_env.git(repo, "add", "model.pth")
    git_env.git(repo, "commit", "-qm", "base")

    save_model(repo / "model.pth", 3, changed_layer=1)
    git_env.git(repo, "stash", "-q")
    worktree = tmp_path / "wt"
    git_env.git(repo, "worktree", "add", "-q", "--detach", str(worktree))
    save_model(worktree / "model.pth", 4, changed_layer=2)
    git_env.git(worktree, "add", "model.pth")  # only in that worktree's index

    assert gc_json(git_env, repo, "--prune=now")["deleted"] == []
    git_env.git(repo, "stash", "pop", "-q")
    assert git_env.git(repo, "status", "--porcelain").strip() == "M model.pth"


def test_gc_removes_leftover_temp_files(git_env, repo):
    tmp_dir = repo / ".git" / "theta" / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    (tmp_dir / "123-killed.tmp").write_bytes(b"partial object")
    report = gc_json(git_env, repo, "--prune=now")
    assert report["temp_files_removed"] == 1
    assert list(tmp_dir.iterdir()) == []


def test_gc_waits_for_a_running_writer(git_env, repo):
    theta_dir = repo / ".git" / "theta"
    with writer_lock(theta_dir):
        gc = subprocess.Popen(
            ["git", "theta", "gc", "--prune=now"],
            cwd=repo,
            env=git_env.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # gc says it is waiting only once it has found the lock taken.
        assert b"waiting for running git commands" in gc.stderr.readline()
        time.sleep(0.2)
        assert gc.poll() is None, "gc must wait while an object writer holds the lock"
    gc.communicate(timeout=60)
    assert gc.returncode == 0


def test_gc_rejects_a_bad_prune_date(git_env, repo):
    result = git_env.theta(repo, "gc", "--prune=not-a-date-at-all", check=False)
    assert result.returncode == 128
    assert b"--prune='not-a-date-at-all'" in result.stderr


def test_gc_keeps_a_commit_only_in_a_linked_worktrees_head_reflog(git_env, repo, tmp_path):
    """As `git gc` does: a detached worktree's HEAD reflog is a root, like any other reflog."""
    save_model(repo / "model.pth", 0)
    git_env.git(repo, "add", "model.pth")
    git_env.git(repo, "commit", "-qm", "base")
    worktree = tmp_path / "wt"
    git_env.git(repo, "worktree", "add", "-q", "--detach", str(worktree))
    save_model(worktree / "model.pth", 6, changed_layer=1)
    git_env.git(worktree, "commit", "-qam", "only in the worktree")
    lost = git_env.git(worktree, "rev-parse", "HEAD").strip()
    git_env.git(worktree, "checkout", "-q", "--detach", "HEAD~1")

    assert gc_json(git_env, repo, "--prune=now")["deleted"] == []
    git_env.git(worktree, "checkout", "-q", lost)
    git_env.theta(worktree, "fsck")


def test_gc_run_from_a_linked_worktree_keeps_the_main_worktrees_index(git_env, repo, tmp_path):
    save_model(repo / "model.pth", 0)
    git_env.git(repo, "add", "model.pth")
    git_env.git(repo, "commit", "-qm", "base")
    worktree = tmp_path / "wt"
    git_env.git(repo, "worktree", "add", "-q", "--detach", str(worktree))
    save_model(repo / "model.pth", 7, changed_layer=0)
    git_env.git(repo, "add", "model.pth")  # only in the main worktree's index

    assert gc_json(git_env, worktree, "--prune=now")["deleted"] == []
    git_env.theta(repo, "fsck")


def test_gc_with_delta_chains_keeps_every_base_and_every_kept_commit_checks_out(git_env, repo):
    import numpy as np
    from safetensors.numpy import save_file

    # Over 8 MB, so the filter pairs each version with the staged one and stores deltas.
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal(2_400_000) * 0.02).astype(np.float32)
    git_env.git(repo, "config", "theta.maxDeltaDepth", "2")
    files = []
    for step in range(5):
        save_file({"w": weights, "step": np.array([step], np.int64)}, repo / "model.safetensors")
        files.append((repo / "model.safetensors").read_bytes())
        git_env.git(repo, "add", "model.safetensors")
        git_env.git(repo, "commit", "-qm", f"step {step}")
        weights = weights + (rng.standard_normal(weights.shape) * 1e-4).astype(np.float32)
    store = local_store(repo)
    depths = []
    w_oids = []
    for rev in range(4, -1, -1):
        manifest = git_env.git(repo, "cat-file", "blob", f"HEAD~{rev}:model.safetensors")
        oid = next(
            line.split()[-1] for line in manifest.splitlines() if line.startswith("tensor w ")
        )
        w_oids.append(oid)
        with store.open_stored(oid) as stored:
            depths.append(stored.depth)
    assert depths == [0, 1, 2, 0, 1]
    # Only steps 2 and 4 stay reachable, in a history of their own: no kept manifest
    # names steps 0, 1 and 3, but the tensors of steps 0 and 3 are the (skip-delta)
    # bases of steps 2 and 4; step 1's is no one's.
    git_env.git(repo, "checkout", "-q", "--orphan", "kept", "HEAD~2")
    git_env.git(repo, "commit", "-qm", "step 2 alone")
    (repo / "model.safetensors").write_bytes(files[4])
    git_env.git(repo, "add", "model.safetensors")
    git_env.git(repo, "commit", "-qm", "step 4 alone")
    git_env.git(repo, "branch", "-qD", "main")
    git_env.git(repo, "reflog", "expire", "--expire=now", "--all")
    report = gc_json(git_env, repo, "--prune=now")
    assert w_oids[1] in report["deleted"], "the old chain was not freed"
    assert w_oids[0] not in report["deleted"] and w_oids[3] not in report["deleted"]
    git_env.theta(repo, "fsck")
    for rev, data in (("kept~1", files[2]), ("kept", files[4])):
        git_env.git(repo, "checkout", "-q", rev)
        assert (repo / "model.safetensors").read_bytes() == data, rev
