"""Walks over refs and manifests (history.py): all_ref_tips and objects_needed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pygit2
from safetensors.numpy import save as safetensors_save

from git_theta_filter.clean import clean
from git_theta_filter.gitrepo import GitRepo
from git_theta_filter.history import all_ref_tips, objects_needed, open_pygit2
from git_theta_filter.manifest import Manifest
from git_theta_filter.store.local import LocalStore


def manifest_of(store: LocalStore, tensors: dict[str, np.ndarray]) -> Manifest:
    return Manifest.parse(clean(io.BytesIO(safetensors_save(tensors)), store, "m.safetensors"))


def test_objects_needed_is_every_object_named_with_its_payload_length(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "theta")
    shared = np.arange(16, dtype=np.float32)
    first = manifest_of(store, {"a": shared, "b": np.zeros(3, dtype=np.int64)})
    second = manifest_of(store, {"a": shared, "c": np.ones(5, dtype=np.float64)})
    needed = objects_needed([first, second])
    assert set(needed) == first.object_ids() | second.object_ids()
    assert needed[first.tensors[0].oid] == 64
    assert needed[first.skeleton] == first.skeleton_length
    assert objects_needed([]) == {}


def test_all_ref_tips_peels_tags_and_skips_refs_to_non_commits(git_env, repo: Path) -> None:
    git_env.git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    git_env.git(repo, "branch", "side", "HEAD~1")
    git_env.git(repo, "tag", "-a", "-m", "release", "v1", "HEAD~1")
    blob = git_env.run("git", "hash-object", "-w", "--stdin", cwd=repo, input=b"x").stdout
    git_env.git(repo, "update-ref", "refs/tags/a-blob", blob.decode().strip())
    head, parent = git_env.git(repo, "rev-parse", "HEAD", "HEAD~1").split()
    tips = all_ref_tips(open_pygit2(GitRepo.discover(repo)))
    assert sorted(map(str, tips)) == sorted([head, parent, parent])
    assert all(isinstance(tip, pygit2.Oid) for tip in tips)
