"""A full disk or a write error while cleaning and while smudging.

The disk is simulated with RLIMIT_FSIZE (and SIGXFSZ ignored, so a write past
the limit fails with EFBIG instead of killing the process), set on git and
inherited by the filter; in process, by a write function that fails part way.
Whatever fails, the git command says so clearly, no partial object or temp
file is left in the store, and neither the index nor the work tree names a
half-written object.
"""

from __future__ import annotations

import errno
import io
import os
import resource
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from attacks import torch_zip_bytes
from helpers import (
    assert_status_clean,
    copy_repo,
    isolated_git_env,
    mlp_checkpoint,
    object_path,
    read_manifest,
    save,
    sha256_file,
    store_oids,
    tracked_repo,
)

import git_theta_filter.store.fileio as store_fileio
from git_theta_filter.clean import clean
from git_theta_filter.store.local import LocalStore, StoreWriteError

LIMIT = 1 << 20
MODEL = "model.pth"


def limited_files() -> None:
    """preexec_fn: files of at most LIMIT bytes for git and everything it starts."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def run_limited(git_env, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=git_env.env,
        capture_output=True,
        preexec_fn=limited_files,
        check=False,
    )


def big_checkpoint(seed: int) -> dict:
    """Larger than LIMIT: one 1.6 MB tensor among small ones."""
    return {
        "model": mlp_checkpoint(seed, (8, 16, 4)),
        "big": torch.randn(400, 1000, generator=torch.Generator().manual_seed(seed)),
    }


def assert_store_has_only_whole_objects(repo: Path) -> None:
    tmp = repo / ".git" / "theta" / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == [], f"temp files left: {list(tmp.iterdir())}"
    for oid in store_oids(repo):
        assert sha256_file(object_path(repo, oid)) == oid, f"partial object {oid}"


# -- in process: a write that fails at every point -------------------------------------------------


class FailingWrites:
    """Replaces the store's write function: the first ``budget`` bytes go through, then ENOSPC."""

    def __init__(self, budget: int | None) -> None:
        self.budget = budget
        self.written = 0
        self._write_all = store_fileio.write_all

    def __call__(self, file, data) -> None:
        size = len(memoryview(data).cast("B"))
        if self.budget is not None and self.written + size > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._write_all(file, data)
        self.written += size


@pytest.mark.parametrize("kind", ["torch-zip", "opaque"])
def test_a_write_failure_at_any_point_of_clean_leaves_only_whole_objects(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = (
        torch_zip_bytes(mlp_checkpoint(0, (8, 16, 4))) if kind == "torch-zip" else os.urandom(3000)
    )
    counting = FailingWrites(None)
    monkeypatch.setattr(store_fileio, "write_all", counting)
    clean(io.BytesIO(data), LocalStore(tmp_path / "whole"), MODEL, warn=lambda message: None)
    total = counting.written
    budgets = sorted({0, 1, 63, 64, 65, total - 1} | set(range(0, total, max(1, total // 40))))
    for budget in budgets:
        store = LocalStore(tmp_path / f"budget-{budget}")
        monkeypatch.setattr(store_fileio, "write_all", FailingWrites(budget))
        with pytest.raises(StoreWriteError) as info:
            clean(io.BytesIO(data), store, MODEL, warn=lambda message: None)
        assert (
            str(info.value)
            == f"{MODEL}: cannot write objects to {store.theta_dir}: No space left on device"
        ), budget
        assert info.value.errno == errno.ENOSPC
        assert not store.tmp_dir.exists() or list(store.tmp_dir.iterdir()) == [], (
            f"budget {budget}: temp files left"
        )
        monkeypatch.setattr(store_fileio, "write_all", counting)
        for oid in store.iter_oids():
            store.verify(oid)


# -- through git ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A bare repository on disk with one big model pushed to its store, and a clone that checked
    the manifest out without its objects (GIT_THETA_SKIP_SMUDGE=1)."""
    root = tmp_path_factory.mktemp("disk-full")
    git_env = isolated_git_env(root)
    bare = root / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    author = tracked_repo(git_env, root / "author")
    digest = save(big_checkpoint(1), author / MODEL)
    git_env.git(author, "add", MODEL)
    git_env.git(author, "commit", "-qm", "big model")
    git_env.git(author, "remote", "add", "origin", str(bare))
    git_env.git(author, "push", "-q", "origin", "main")
    clone = root / "clone"
    git_env.run("git", "clone", "-q", str(bare), str(clone), env={"GIT_THETA_SKIP_SMUDGE": "1"})
    return git_env, author, clone, digest


def test_git_add_on_a_full_disk_fails_clearly_and_leaves_the_index_alone(
    shared: tuple, tmp_path: Path
) -> None:
    git_env, author, _, _ = shared
    repo = copy_repo(author, tmp_path / "repo")
    staged = git_env.git(repo, "rev-parse", f":{MODEL}").strip()
    save(big_checkpoint(2), repo / MODEL)
    result = run_limited(git_env, repo, "git", "add", MODEL)
    assert result.returncode != 0
    stderr = result.stderr.decode()
    theta_dir = (repo / ".git" / "theta").resolve()
    assert (
        f"git-theta: error: {MODEL}: cannot write objects to {theta_dir}: File too large; "
        "free some disk space" in stderr
    )
    assert f"{MODEL}: clean filter 'theta' failed" in stderr
    assert git_env.git(repo, "rev-parse", f":{MODEL}").strip() == staged
    assert_store_has_only_whole_objects(repo)
    git_env.git(repo, "add", MODEL)  # with room again, the same add works
    git_env.theta(repo, "fsck")


def test_checkout_on_a_full_disk_fails_clearly_and_writes_no_file(
    shared: tuple, tmp_path: Path
) -> None:
    """Smudge fetches the missing objects on demand; the local copy cannot be written."""
    git_env, _, clone, digest = shared
    repo = copy_repo(clone, tmp_path / "repo")
    assert read_manifest(git_env, repo, f"HEAD:{MODEL}").format == "torch-zip"
    (repo / MODEL).unlink()
    result = run_limited(git_env, repo, "git", "checkout", "--", MODEL)
    assert result.returncode != 0
    stderr = result.stderr.decode()
    theta_dir = (repo / ".git" / "theta").resolve()
    assert (
        f"git-theta: error: {MODEL}: could not download 1 of 6 tensor objects: cannot write "
        f"objects to {theta_dir}: File too large; free some disk space" in stderr
    ), stderr
    assert f"{MODEL}: smudge filter theta failed" in stderr
    assert not (repo / MODEL).exists()
    assert_store_has_only_whole_objects(repo)
    git_env.git(repo, "checkout", "--", MODEL)
    assert sha256_file(repo / MODEL) == digest
    assert_status_clean(git_env, repo)


def test_git_writing_the_work_tree_on_a_full_disk_leaves_the_index_alone(
    shared: tuple, tmp_path: Path
) -> None:
    """The filter's output is whole; git's own write of the file fails. git says so, keeps the
    index, and `git status` flags the cut file as modified, never as the committed version."""
    git_env, author, _, digest = shared
    repo = copy_repo(author, tmp_path / "repo")
    staged = git_env.git(repo, "rev-parse", f":{MODEL}").strip()
    (repo / MODEL).unlink()
    result = run_limited(git_env, repo, "git", "checkout", "--", MODEL)
    assert result.returncode != 0
    assert f"unable to write file {MODEL}" in result.stderr.decode()
    assert git_env.git(repo, "rev-parse", f":{MODEL}").strip() == staged
    assert git_env.git(repo, "status", "--porcelain").splitlines() == [f" M {MODEL}"]
    assert_store_has_only_whole_objects(repo)
    git_env.git(repo, "checkout", "--", MODEL)
    assert sha256_file(repo / MODEL) == digest
    assert_status_clean(git_env, repo)


def test_theta_pull_on_a_full_disk_leaves_the_work_tree_file_as_it_was(
    shared: tuple, tmp_path: Path
) -> None:
    git_env, _, clone, digest = shared
    repo = copy_repo(clone, tmp_path / "repo")
    manifest = (repo / MODEL).read_bytes()
    git_env.theta(repo, "fetch")  # the objects are here; writing the file is what fails
    result = run_limited(git_env, repo, "git", "theta", "pull")
    assert result.returncode != 0
    assert result.stderr.decode().endswith(
        f"git-theta: error: {MODEL}: cannot write the rebuilt file: File too large; "
        "free some disk space, then run `git theta pull` again\n"
    )
    assert (repo / MODEL).read_bytes() == manifest
    assert sorted(p.name for p in repo.iterdir()) == [".git", ".gitattributes", MODEL], (
        "a temp file was left"
    )
    assert_status_clean(git_env, repo)
    git_env.theta(repo, "pull")
    assert sha256_file(repo / MODEL) == digest
    assert_status_clean(git_env, repo)
