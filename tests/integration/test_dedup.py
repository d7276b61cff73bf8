"""Identical tensors are stored once: within a file, across files, across commits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import (
    assert_object,
    commit_all,
    copy_repo,
    index_manifest,
    isolated_git_env,
    mlp_checkpoint,
    read_manifest,
    save,
    sha256_file,
    status_lines,
    store_oids,
    tracked_repo,
)
from safetensors.torch import save_file

SIZES = (16, 32, 32, 8)  # three Linear layers: M = 6 tensors
NAMES = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    root = tmp_path_factory.mktemp("dedup")
    git_env = isolated_git_env(root)
    repo = tracked_repo(git_env, root / "template")
    save(mlp_checkpoint(0, SIZES), repo / "model.pth")
    commit_all(git_env, repo, "model.pth", message="v1")
    return git_env, repo


@pytest.fixture
def repo_copy(template: tuple, tmp_path: Path) -> tuple:
    git_env, template_repo = template
    return git_env, copy_repo(template_repo, tmp_path / "repo")


@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_dedup_changing_k_of_m_tensors_adds_k_objects_and_a_skeleton(
    repo_copy: tuple, k: int
) -> None:
    git_env, repo = repo_copy
    before_manifest = read_manifest(git_env, repo, "HEAD:model.pth")
    assert sorted(t.name for t in before_manifest.tensors) == sorted(NAMES)
    before = store_oids(repo)

    checkpoint = mlp_checkpoint(0, SIZES)
    changed = NAMES[:k]
    for name in changed:
        checkpoint[name] += 1.0
    save(checkpoint, repo / "model.pth")
    git_env.git(repo, "add", "model.pth")
    if k == 0:
        # The same bytes saved again: the same manifest, nothing to commit, nothing stored.
        assert status_lines(git_env, repo) == []
        assert store_oids(repo) == before
        return
    git_env.git(repo, "commit", "-qm", f"fine-tune {k} tensors")

    after_manifest = read_manifest(git_env, repo, "HEAD:model.pth")
    new = store_oids(repo) - before
    old_oids = {t.name: t.oid for t in before_manifest.tensors}
    new_oids = {t.name: t.oid for t in after_manifest.tensors}
    assert len(new) == k + 1, (
        f"expected {k} tensor objects and a skeleton, got {len(new)} new objects"
    )
    assert new == {new_oids[name] for name in changed} | {after_manifest.skeleton}
    assert after_manifest.skeleton != before_manifest.skeleton
    for name in NAMES:
        assert (new_oids[name] == old_oids[name]) == (name not in changed), name
    for name in changed:
        assert_object(repo, new_oids[name], tensor=checkpoint[name])


def test_dedup_identical_tensors_across_files_and_formats_are_stored_once(repo_copy: tuple) -> None:
    git_env, repo = repo_copy
    before = store_oids(repo)
    checkpoint = mlp_checkpoint(7, SIZES)
    save(checkpoint, repo / "a.pth")
    save(checkpoint, repo / "sub" / "b.pth")
    save_file(checkpoint, str(repo / "c.safetensors"))
    git_env.git(repo, "add", "a.pth", "sub/b.pth", "c.safetensors")
    manifests = {
        path: index_manifest(git_env, repo, path)
        for path in ("a.pth", "sub/b.pth", "c.safetensors")
    }
    tensor_oids = {path: {t.name: t.oid for t in m.tensors} for path, m in manifests.items()}
    assert tensor_oids["a.pth"] == tensor_oids["sub/b.pth"] == tensor_oids["c.safetensors"]
    # The torch prefix (file stem) differs, so the two zips have different skeletons.
    skeletons = {m.skeleton for m in manifests.values()}
    assert len(skeletons) == 3
    assert store_oids(repo) - before == set(tensor_oids["a.pth"].values()) | skeletons
    assert len(store_oids(repo) - before) == len(NAMES) + 3


def test_dedup_identical_storages_within_one_file(repo_copy: tuple) -> None:
    git_env, repo = repo_copy
    torch.manual_seed(0)
    value = torch.randn(64, 16)
    # Three separate storages with equal bytes, and a different one.
    checkpoint = {"a": value.clone(), "b": value.clone(), "c": value.clone(), "d": value + 1}
    digest = save(checkpoint, repo / "copies.pth")
    before = store_oids(repo)
    git_env.git(repo, "add", "copies.pth")
    manifest = index_manifest(git_env, repo, "copies.pth")
    oids = {t.name: t.oid for t in manifest.tensors}
    assert oids["a"] == oids["b"] == oids["c"] != oids["d"]
    # Each storage record is still spliced in at its own place.
    assert [s.oid for s in manifest.splices].count(oids["a"]) == 3
    assert store_oids(repo) - before == {oids["a"], oids["d"], manifest.skeleton}
    (repo / "copies.pth").unlink()
    git_env.git(repo, "checkout", "--", "copies.pth")
    assert sha256_file(repo / "copies.pth") == digest


def test_dedup_returning_to_an_earlier_version_adds_nothing(repo_copy: tuple) -> None:
    git_env, repo = repo_copy
    save(mlp_checkpoint(1, SIZES), repo / "model.pth")
    commit_all(git_env, repo, "model.pth", message="v2")
    after_v2 = store_oids(repo)
    save(mlp_checkpoint(0, SIZES), repo / "model.pth")
    commit_all(git_env, repo, "model.pth", message="back to v1")
    assert store_oids(repo) == after_v2
    assert git_env.git(repo, "rev-parse", "HEAD:model.pth") == git_env.git(
        repo, "rev-parse", "HEAD~2:model.pth"
    )
