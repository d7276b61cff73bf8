"""Partial clones (`git clone --filter=blob:none`): history reads the manifest blobs the
clone left on its promisor remote through git, in batches, and fails loudly where it
cannot; a missing blob is never taken for "not a model file"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pygit2
import pytest
from helpers import isolated_git_env, mlp_checkpoint, save, store_oids

from git_theta_filter.promisor import GitObjectsUnavailableError, fetch_missing

VERSIONS = 6


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A bare repository with VERSIONS commits of model.pth (each with a metrics file),
    its store filled by the pushes, serving partial clones; and the full clone that made it."""
    root = tmp_path_factory.mktemp("partial")
    git_env = isolated_git_env(root)
    bare = root / "shared.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    for key in ("uploadpack.allowFilter", "uploadpack.allowAnySHA1InWant"):
        git_env.git(bare, "config", key, "true")
    full = root / "full"
    git_env.run("git", "clone", "-q", str(bare), str(full))
    git_env.theta(full, "track", "*.pth")
    for version in range(VERSIONS):
        save(mlp_checkpoint(version), full / "model.pth")
        (full / "model.pth.metrics.json").write_text(json.dumps({"loss": 1.0 / (version + 1)}))
        (full / "notes.txt").write_text(f"notes {version}\n")
        git_env.git(
            full, "add", ".gitattributes", "model.pth", "model.pth.metrics.json", "notes.txt"
        )
        git_env.git(full, "commit", "-qm", f"v{version}")
    git_env.git(full, "push", "-q", "origin", "main")
    return git_env, bare, full


def partial_clone(git_env, bare: Path, where: Path) -> Path:
    git_env.run("git", "clone", "-q", "--filter=blob:none", f"file://{bare}", str(where))
    return where


def promisor_packs(clone: Path) -> int:
    return len(list((clone / ".git" / "objects" / "pack").glob("*.promisor")))


def test_partial_clone_theta_log_reads_every_version_in_one_batch(shared, tmp_path) -> None:
    git_env, bare, full = shared
    want = json.loads(git_env.run("git", "theta-log", "--json", cwd=full).stdout)["entries"]
    assert len(want) == VERSIONS

    clone = partial_clone(git_env, bare, tmp_path / "clone")
    packs = promisor_packs(clone)
    got = json.loads(git_env.run("git", "theta-log", "--json", cwd=clone).stdout)["entries"]
    assert [(e["commit"], e["metrics"]) for e in got] == [(e["commit"], e["metrics"]) for e in want]
    # The older versions' manifests (and metrics files) came down in one fetch.
    assert promisor_packs(clone) - packs == 1


def test_partial_clone_du_fsck_and_fetch_all_see_the_whole_history(shared, tmp_path) -> None:
    git_env, bare, full = shared
    clone = partial_clone(git_env, bare, tmp_path / "clone")
    du = json.loads(git_env.theta(clone, "du", "--json").stdout)
    full_du = json.loads(git_env.theta(full, "du", "--json").stdout)
    assert du["file_versions"] == full_du["file_versions"] == VERSIONS
    assert du["logical_bytes"] == full_du["logical_bytes"]

    # Only HEAD's objects came with the checkout: fsck --all must say the rest is missing.
    fsck = git_env.theta(clone, "fsck", "--all", "--json", check=False)
    assert fsck.returncode == 1
    assert json.loads(fsck.stdout)["missing"], "fsck --all missed the older versions' objects"

    git_env.theta(clone, "fetch", "--all")
    git_env.theta(clone, "fsck", "--all")
    stored = {p.name for p in (bare / "theta" / "objects").glob("*/*/*")}
    assert {p.name for p in (clone / ".git" / "theta" / "objects").glob("*/*/*")} == stored


def test_partial_clone_without_its_promisor_fails_loudly(shared, tmp_path) -> None:
    git_env, bare, full = shared
    moved = tmp_path / "shared.git"
    shutil.copytree(bare, moved)
    clone = partial_clone(git_env, moved, tmp_path / "clone")
    shutil.rmtree(moved)
    # Every version's objects are here, but only HEAD's manifest blob is.
    for name in ("objects", "packs"):
        if (full / ".git" / "theta" / name).exists():
            shutil.copytree(
                full / ".git" / "theta" / name,
                clone / ".git" / "theta" / name,
                dirs_exist_ok=True,
            )
    kept = store_oids(clone)
    assert kept == store_oids(full)
    for command in (
        ("theta-log",),
        ("theta", "du"),
        ("theta", "fsck", "--all"),
        ("theta", "fetch", "--all"),
        ("theta", "gc", "--prune=now"),
    ):
        result = git_env.run("git", *command, cwd=clone, check=False)
        stderr = result.stderr.decode()
        assert result.returncode == 128, f"git {' '.join(command)}: {result.returncode} {stderr}"
        assert "is not in this clone: this partial clone could not fetch it from 'origin'" in stderr
        assert "(origin: fatal: " in stderr, "git's reason is not the line quoted"
        assert "check that 'origin' can be reached, then run the command again" in stderr
    # gc took no unreadable blob for "not a model file": it deleted nothing.
    assert store_oids(clone) == kept


def test_a_missing_git_object_outside_a_partial_clone_is_named_as_damage(tmp_path) -> None:
    # No promisor remote to ask: the object is lost, and the hint leads to git fsck.
    git = pygit2.init_repository(str(tmp_path / "plain"))
    lost = pygit2.Oid(hex="1" * 40)
    with pytest.raises(GitObjectsUnavailableError) as error:
        fetch_missing(git, [lost])
    assert str(error.value) == (
        f"git object {lost} is not in this clone: "
        "the repository lacks it and is not a partial clone"
    )
    assert "git fsck" in error.value.hint
