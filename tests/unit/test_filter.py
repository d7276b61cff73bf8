"""The filter's core (filter.py) and the work-tree write beside smudge (smudge.write_atomically)."""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import os
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import large_safetensors_bytes
from safetensors.numpy import save as safetensors_save

from git_theta_filter import filter as filter_module
from git_theta_filter.clean import clean
from git_theta_filter.filter import ThetaFilter, smudge_or_fetch, staged_manifest
from git_theta_filter.filter_session import start_filter
from git_theta_filter.gitrepo import GitRepo
from git_theta_filter.manifest import Manifest
from git_theta_filter.smudge import WorkTreeWriteError, write_atomically
from git_theta_filter.store.local import LocalStore, ObjectMissingError, StoreWriteError


def model_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return safetensors_save(
        {"a": rng.standard_normal((64, 32)).astype(np.float32), "b": np.arange(8, dtype=np.int64)}
    )


def rebuild(plan) -> bytes:
    out = bytearray()
    plan.write(out.extend)
    return bytes(out)


class CopyingFetcher:
    """Stands in for OnDemandFetcher: "downloads" from another local store, and records calls."""

    def __init__(self, source: LocalStore, destination: LocalStore) -> None:
        self.source = source
        self.destination = destination
        self.calls: list[bytes] = []

    def fetch_missing(self, manifest_bytes: bytes) -> None:
        self.calls.append(manifest_bytes)
        for oid in Manifest.parse(manifest_bytes).object_ids():
            if not self.destination.has(oid):
                self.destination.import_verified(self._copy(oid), oid)

    def _copy(self, oid: str) -> Path:
        temporary = self.destination.tmp_dir / f"fetched-{oid}"
        temporary.parent.mkdir(parents=True, exist_ok=True)
        # What a remote store would send: the canonical bytes (docs/store.md).
        with self.source.canonical_file(oid) as canonical:
            shutil.copyfile(canonical, temporary)
        return temporary


@pytest.fixture
def theta_repo(git_env, repo: Path) -> GitRepo:
    return GitRepo.discover(repo)


# -- ThetaFilter ----------------------------------------------------------------------


def test_filter_cleans_and_smudges_a_file_back_byte_for_byte(theta_repo: GitRepo) -> None:
    data = model_bytes(0)
    handler = ThetaFilter(theta_repo)
    manifest = handler.clean("model.safetensors", io.BytesIO(data))
    assert Manifest.parse(manifest).format == "safetensors"
    assert rebuild(handler.prepare_smudge("model.safetensors", io.BytesIO(manifest))) == data


def test_the_filter_cleans_with_the_cyclic_collector_paused(
    theta_repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    import git_theta_filter.clean as clean_module

    seen = []
    real_clean = clean_module.clean

    def recording_clean(*args, **kwargs):
        seen.append(gc.isenabled())
        return real_clean(*args, **kwargs)

    monkeypatch.setattr(clean_module, "clean", recording_clean)
    ThetaFilter(theta_repo).clean("model.safetensors", io.BytesIO(model_bytes(3)))
    assert seen == [False]
    assert gc.isenabled()


def test_filter_runs_before_work_once_before_a_clean_the_cache_does_not_answer(
    theta_repo: GitRepo,
) -> None:
    calls = []

    def before_work() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise OSError("hooks directory not writable")

    handler = ThetaFilter(theta_repo, before_work=before_work)
    with pytest.raises(OSError, match="not writable"):
        handler.clean("model.safetensors", io.BytesIO(model_bytes(0)))
    manifest = handler.clean("model.safetensors", io.BytesIO(model_bytes(0)))  # asked again
    assert calls == [0, 1]
    handler.clean("model.safetensors", io.BytesIO(model_bytes(1)))
    assert calls == [0, 1]  # once it succeeded, never again
    cached = ThetaFilter(theta_repo, before_work=lambda: calls.append("cached"))
    assert cached.clean("model.safetensors", io.BytesIO(model_bytes(0))) == manifest
    assert calls == [0, 1]  # a clean the cache answers does no work


def _hooks_check_failing_once() -> tuple[list[bool], Callable[[], None]]:
    """A ``before_work`` that fails the first time, and the list of calls to it: whether
    each ran on the main thread."""
    calls: list[bool] = []

    def before_work() -> None:
        calls.append(threading.current_thread() is threading.main_thread())
        if len(calls) == 1:
            raise OSError("hooks directory not writable")

    return calls, before_work


def test_a_large_clean_runs_before_work_beside_it_and_raises_its_error_after(
    theta_repo: GitRepo,
) -> None:
    """The hooks check's git processes run while a large file streams in; its failure
    still fails the request, and the next one asks again."""
    from git_theta_filter.clean_cache import CACHED_UP_TO

    calls, before_work = _hooks_check_failing_once()
    handler = ThetaFilter(theta_repo, before_work=before_work)
    read_settings = handler.store._settings_source
    assert read_settings is not None
    settings_read_on: list[bool] = []

    def settings():  # the store's settings (a git process) are read beside too
        settings_read_on.append(threading.current_thread() is threading.main_thread())
        return read_settings()

    handler.store._settings_source = settings
    large = os.urandom(CACHED_UP_TO + 1)
    with pytest.raises(OSError, match="not writable"):
        handler.clean("large.bin", io.BytesIO(large))
    manifest = handler.clean("large.bin", io.BytesIO(large))
    assert calls == [False, False]  # on a thread of its own, asked again
    assert handler.clean("large.bin", io.BytesIO(large)) == manifest
    assert calls == [False, False]  # once it succeeded, never again
    assert settings_read_on == [False]


def test_a_smudge_runs_before_work_beside_it_and_raises_its_error_after(
    theta_repo: GitRepo,
) -> None:
    """The hooks check's git processes run while the manifest is parsed and its objects
    checked; its failure still fails the smudge, the next one asks again, and the
    store's settings (for writing only) are not read for it."""
    data = model_bytes(2)
    manifest = ThetaFilter(theta_repo).clean("model.safetensors", io.BytesIO(data))
    calls, before_work = _hooks_check_failing_once()
    handler = ThetaFilter(theta_repo, before_work=before_work)
    settings_read: list[bool] = []
    handler.store._settings_source = lambda: settings_read.append(True)  # type: ignore[assignment,return-value]
    with pytest.raises(OSError, match="not writable"):
        handler.prepare_smudge("model.safetensors", io.BytesIO(manifest))
    assert rebuild(handler.prepare_smudge("model.safetensors", io.BytesIO(manifest))) == data
    assert calls == [False, False]  # on a thread of its own, asked again
    assert rebuild(handler.prepare_smudge("model.safetensors", io.BytesIO(manifest))) == data
    assert calls == [False, False]  # once it succeeded, never again
    assert settings_read == []


def test_a_file_large_in_the_work_tree_is_not_read_ahead_for_the_cache(
    theta_repo: GitRepo,
) -> None:
    """Over the cache's limit in the work tree, the content streams straight into the
    clean; git's content decides the manifest, and a small one is only not remembered."""
    from git_theta_filter.clean_cache import CACHED_UP_TO

    assert theta_repo.worktree is not None
    with open(theta_repo.worktree / "big.safetensors", "wb") as f:
        f.truncate(CACHED_UP_TO + 1)  # sparse: the size is what matters
    data = model_bytes(0)
    handler = ThetaFilter(theta_repo)
    manifest = handler.clean("big.safetensors", io.BytesIO(data))
    assert handler.clean("model.safetensors", io.BytesIO(data)) == manifest
    assert handler.cleaned.lookup(data, handler.store) == manifest
    # The work-tree copy is not the bytes cleaned: no guess that they come again.
    big = os.stat(theta_repo.worktree / "big.safetensors")
    assert not handler.cleaned.expects_again("big.safetensors", big)


@pytest.fixture
def large_cleaned(theta_repo: GitRepo) -> tuple[GitRepo, Path, bytes]:
    """A large model in the work tree, cleaned once by a filter process."""
    assert theta_repo.worktree is not None
    path = theta_repo.worktree / "big.safetensors"
    path.write_bytes(large_safetensors_bytes(0))
    with open(path, "rb", buffering=0) as file:
        manifest = ThetaFilter(theta_repo).clean("big.safetensors", file)
    return theta_repo, path, manifest


def test_a_large_file_cleaned_again_unchanged_is_answered_from_the_cache(
    large_cleaned, monkeypatch: pytest.MonkeyPatch
) -> None:
    """git's clean in `git commit` after a racy add (docs/store.md, "Clean cache" rule 4):
    the same stat data, the same bytes: hashed, not parsed, and nothing left in tmp/."""
    repo, path, manifest = large_cleaned
    handler = ThetaFilter(repo)
    monkeypatch.setattr(ThetaFilter, "_clean", lambda *args, **kwargs: pytest.fail("parsed"))
    with open(path, "rb", buffering=0) as file:
        assert handler.clean("big.safetensors", file) == manifest
    assert not list(handler.store.tmp_dir.iterdir())


def test_other_bytes_under_an_unchanged_large_file_get_their_own_manifest(
    large_cleaned, tmp_path: Path
) -> None:
    """git may send other bytes for the path (`git hash-object --stdin --path`): the
    stat data only guess, the sha256 decides, and the kept copy is cleaned."""
    repo, path, manifest = large_cleaned
    other = large_safetensors_bytes(1)
    expected = clean(io.BytesIO(other), LocalStore(tmp_path / "elsewhere"), "big.safetensors")
    handler = ThetaFilter(repo)
    assert handler.clean("big.safetensors", io.BytesIO(other)) == expected != manifest
    assert not list(handler.store.tmp_dir.iterdir())
    rebuilt = rebuild(smudge_or_fetch(expected, handler.store, "big.safetensors", None))
    assert rebuilt == other


def test_other_bytes_under_an_unchanged_large_file_on_a_full_disk_fail_by_name(
    large_cleaned, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kept copy of the bytes could not be written: a miss must fail, never clean the
    part that was kept (that would stage another model under the path)."""
    from git_theta_filter.store import fileio

    repo, _path, _manifest = large_cleaned
    real_write_all = fileio.write_all
    calls = []

    def full_at_first_write(file, data) -> None:
        calls.append(len(data))
        if len(calls) == 1:  # the kept copy's first chunk; it then stops copying
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(file, data)

    monkeypatch.setattr(fileio, "write_all", full_at_first_write)
    handler = ThetaFilter(repo)
    with pytest.raises(StoreWriteError, match="big.safetensors: cannot write .*No space left"):
        handler.clean("big.safetensors", io.BytesIO(large_safetensors_bytes(1)))
    assert len(calls) == 1
    assert not list(handler.store.tmp_dir.iterdir())


def test_a_large_file_whose_objects_are_gone_is_cleaned_again(large_cleaned) -> None:
    repo, path, manifest = large_cleaned
    handler = ThetaFilter(repo)
    for oid in Manifest.parse(manifest).object_ids():
        with contextlib.suppress(FileNotFoundError):
            os.chmod(handler.store.object_path(oid), 0o644)
            os.unlink(handler.store.object_path(oid))
    shutil.rmtree(handler.store.packs_dir, ignore_errors=True)
    with open(path, "rb", buffering=0) as file:
        assert handler.clean("big.safetensors", file) == manifest
    for oid in Manifest.parse(manifest).object_ids():
        handler.store.verify(oid)


_PRELOAD_SCRIPT = """
import io, os, sys
from git_theta_filter.clean_cache import CACHED_UP_TO
from git_theta_filter.filter import ThetaFilter
from git_theta_filter.gitrepo import GitRepo
from git_theta_filter.store import codec

handler = ThetaFilter(GitRepo.discover("."))
handler.clean("small.bin", io.BytesIO(os.urandom(4096)))
print(codec._numpy_import is None, "numpy" in sys.modules)
# Opaque bytes: stored as one plain zstd object, which itself needs no numpy.
handler.clean("large.bin", io.BytesIO(os.urandom(CACHED_UP_TO + 1)))
codec._numpy_import.join()
print(codec._numpy_import is None, "numpy" in sys.modules)
"""


def test_a_large_clean_starts_importing_numpy_and_a_small_one_does_not(git_env, repo: Path) -> None:
    """numpy's import (0.1 s of CPU) runs beside the start of a large file's clean, not
    in front of its first block; a small file never needs it."""
    result = git_env.run(sys.executable, "-c", _PRELOAD_SCRIPT, cwd=repo)
    assert result.stdout.decode().split() == ["True", "False", "False", "True"]


def test_the_filter_process_keeps_numpys_blas_to_one_thread(
    git_env, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenBLAS's threads would spin beside the codec's workers; a setting the user
    made is kept."""
    monkeypatch.chdir(repo)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with contextlib.ExitStack() as resources:
        start_filter(resources)
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    with contextlib.ExitStack() as resources:
        start_filter(resources)
    assert os.environ["OPENBLAS_NUM_THREADS"] == "3"


def test_filter_with_skip_smudge_checks_the_manifest_out_as_it_is(theta_repo: GitRepo) -> None:
    manifest = ThetaFilter(theta_repo).clean("model.safetensors", io.BytesIO(model_bytes(0)))
    skipping = ThetaFilter(theta_repo, skip_smudge=True)
    assert rebuild(skipping.prepare_smudge("model.safetensors", io.BytesIO(manifest))) == manifest


# -- staged_manifest ------------------------------------------------------------------


def test_staged_manifest_is_the_index_versions(
    git_env, repo: Path, theta_repo: GitRepo, monkeypatch
) -> None:
    monkeypatch.setattr(filter_module, "LOOK_UP_STAGED_FROM", 0)
    (repo / "model.safetensors").write_bytes(model_bytes(0))
    assert staged_manifest(theta_repo, "model.safetensors") is None, "nothing staged yet"
    git_env.git(repo, "add", "model.safetensors")
    staged = Manifest.parse(
        git_env.run("git", "cat-file", "blob", ":model.safetensors", cwd=repo).stdout
    )
    (repo / "model.safetensors").write_bytes(model_bytes(1))  # the work tree moved on
    assert staged_manifest(theta_repo, "model.safetensors") == staged


def test_staged_manifest_skips_the_look_up_for_a_small_file_or_a_plain_blob(
    git_env, repo: Path, theta_repo: GitRepo, monkeypatch
) -> None:
    (repo / "model.safetensors").write_bytes(model_bytes(0))
    git_env.git(repo, "add", "model.safetensors")
    assert staged_manifest(theta_repo, "model.safetensors") is None, (
        "a file under LOOK_UP_STAGED_FROM is cheaper to hash than to look up"
    )
    monkeypatch.setattr(filter_module, "LOOK_UP_STAGED_FROM", 0)
    (repo / "notes.txt").write_text("not a manifest\n")
    git_env.git(repo, "add", "notes.txt")
    assert staged_manifest(theta_repo, "notes.txt") is None
    assert staged_manifest(theta_repo, "missing.safetensors") is None


# -- smudge_or_fetch -------------------------------------------------------------------


@pytest.fixture
def cleaned(tmp_path: Path) -> tuple[LocalStore, bytes, bytes]:
    """A store that has every object of a file, its manifest, and the file's bytes."""
    full = LocalStore(tmp_path / "full")
    data = model_bytes(2)
    return full, clean(io.BytesIO(data), full, "model.safetensors"), data


def test_smudge_or_fetch_fetches_what_the_store_lacks_then_rebuilds(
    cleaned, tmp_path: Path
) -> None:
    full, manifest, data = cleaned
    empty = LocalStore(tmp_path / "empty")
    fetcher = CopyingFetcher(full, empty)
    plan = smudge_or_fetch(manifest, empty, "model.safetensors", fetcher)  # type: ignore[arg-type]
    assert fetcher.calls == [manifest]
    assert rebuild(plan) == data


def test_smudge_or_fetch_does_not_fetch_when_everything_is_here(cleaned) -> None:
    full, manifest, data = cleaned
    fetcher = CopyingFetcher(full, full)
    assert rebuild(smudge_or_fetch(manifest, full, "m", fetcher)) == data  # type: ignore[arg-type]
    assert fetcher.calls == []


def test_smudge_or_fetch_without_a_fetcher_names_the_missing_object(
    cleaned, tmp_path: Path
) -> None:
    _, manifest, _ = cleaned
    with pytest.raises(ObjectMissingError, match="model.safetensors"):
        smudge_or_fetch(manifest, LocalStore(tmp_path / "empty"), "model.safetensors", None)


# -- write_atomically ------------------------------------------------------------------


@dataclass
class FakePlan:
    path: str
    write: Callable[[Callable[[memoryview], object]], None]


def test_write_atomically_replaces_the_file_whole_with_the_given_mode(tmp_path: Path) -> None:
    target = tmp_path / "models" / "model.pth"
    plan = FakePlan("models/model.pth", lambda write: write(memoryview(b"rebuilt")))
    write_atomically(plan, target, retry="git theta pull")  # type: ignore[arg-type]
    assert target.read_bytes() == b"rebuilt"
    write_atomically(plan, target, retry="git theta pull", mode=0o600)  # type: ignore[arg-type]
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pth"], "a temp file was left"


def test_write_atomically_on_a_full_disk_names_the_file_and_leaves_it_as_it_was(
    tmp_path: Path,
) -> None:
    target = tmp_path / "model.pth"
    target.write_bytes(b"manifest")

    def fill_the_disk(write: Callable[[memoryview], object]) -> None:
        write(memoryview(b"half"))
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WorkTreeWriteError) as caught:
        write_atomically(FakePlan("model.pth", fill_the_disk), target, retry="git theta pull")  # type: ignore[arg-type]
    assert str(caught.value) == "model.pth: cannot write the rebuilt file: No space left on device"
    assert caught.value.hint == "free some disk space, then run `git theta pull` again"
    assert target.read_bytes() == b"manifest"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"], "a temp file was left"


def test_write_atomically_lets_other_errors_through_unchanged(tmp_path: Path) -> None:
    def broken(write: Callable[[memoryview], object]) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError) as caught:
        write_atomically(FakePlan("m", broken), tmp_path / "m", retry="x")  # type: ignore[arg-type]
    assert not isinstance(caught.value, WorkTreeWriteError) and caught.value.errno == errno.EIO


def test_a_large_file_written_again_is_cleaned_without_a_kept_copy(
    large_cleaned, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new version (a fine-tune's next step) changes the stat data: its clean streams
    as before, paying for no copy it would then clean from."""
    repo, path, manifest = large_cleaned
    path.write_bytes(large_safetensors_bytes(1))
    handler = ThetaFilter(repo)
    monkeypatch.setattr(ThetaFilter, "_clean_again", lambda *args: pytest.fail("kept a copy"))
    with open(path, "rb", buffering=0) as file:
        assert handler.clean("big.safetensors", file) != manifest


def test_a_disk_too_full_for_the_kept_copy_fails_only_a_clean_the_cache_cannot_answer(
    large_cleaned, monkeypatch: pytest.MonkeyPatch
) -> None:
    from git_theta_filter.store import fileio
    from git_theta_filter.store.local import StoreWriteError

    repo, path, manifest = large_cleaned

    def full_disk(file, data) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio, "write_all", full_disk)
    handler = ThetaFilter(repo)
    with open(path, "rb", buffering=0) as file:
        assert handler.clean("big.safetensors", file) == manifest
    with pytest.raises(StoreWriteError) as raised:
        handler.clean("big.safetensors", io.BytesIO(large_safetensors_bytes(1)))
    assert "big.safetensors" in str(raised.value)
