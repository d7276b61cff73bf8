"""Another repository's store, read for a remote that is a local path (store/repository.py).

That repository may be another user's: its packs, encoded objects and delta chains are
read with the guards of a directory store's files, and decoding them is bounded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import fetch_bytes, flip_a_raw_plane_byte, within

from git_theta_filter.store import repository
from git_theta_filter.store.base import StoreError
from git_theta_filter.store.encoded import BLOCK_SIZE
from git_theta_filter.store.local import LocalStore
from git_theta_filter.store.repository import RepositoryObjectError, RepositoryStore
from git_theta_filter.store.transfer import TransferFailedError, download

ELEMENTS = 2 * BLOCK_SIZE // 4


def weights(seed: int) -> bytes:
    return np.random.default_rng(seed).standard_normal(ELEMENTS, dtype=np.float32).tobytes()


def write(store: LocalStore, payload: bytes, previous: str | None = None) -> str:
    with store.expecting([previous] if previous else []):
        writer = store.writer("F32", (ELEMENTS,), len(payload))
        writer.write(payload)
        return writer.commit()


@pytest.fixture
def source(tmp_path: Path) -> LocalStore:
    """The other repository's store: a full object, and a delta on it."""
    return LocalStore(tmp_path / "other" / ".git" / "theta")


def chain(store: LocalStore) -> tuple[str, str, bytes]:
    first = weights(1)
    full = write(store, first)
    second = bytearray(first)
    second[100] ^= 0x40
    delta = write(store, bytes(second), full)
    return full, delta, bytes(second)


def test_a_delta_chain_over_the_decoding_budget_is_refused(
    source: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two members of 1 MiB blocks hold 2 MiB to decode a block: over a budget of 1.5."""
    full, delta, second = chain(source)
    store = RepositoryStore(source.theta_dir)
    assert fetch_bytes(store, delta, tmp_path / "ok").endswith(second)
    monkeypatch.setattr(repository, "CHAIN_BUDGET", 3 * BLOCK_SIZE // 2)
    fetch_bytes(store, full, tmp_path / "full")  # one member: within the budget
    with pytest.raises(RepositoryObjectError, match="delta chain holds blocks of more than"):
        fetch_bytes(store, delta, tmp_path / "refused")


@pytest.mark.parametrize("planted", ["index-link", "pack-fifo"])
def test_a_pack_file_that_is_a_link_or_a_fifo_is_refused_unread(
    source: LocalStore, tmp_path: Path, planted: str
) -> None:
    """A pack's index linked to a file elsewhere, or a pack that is a FIFO (a read of it
    would block for ever): a named error, and neither is opened for reading."""
    with source.packing():
        small = source.write_small("U8", (16,), b"0123456789abcdef")
    assert small is not None
    (pack,) = source.packs()
    target = pack.with_suffix(".idx") if planted == "index-link" else pack
    kept = tmp_path / "kept"
    target.rename(kept)
    if planted == "index-link":
        target.symlink_to(kept)
    else:
        os.mkfifo(target)
    store = RepositoryStore(source.theta_dir)
    with pytest.raises(StoreError, match=f"pack {pack.name}: .*(symbolic link|not a regular)"):
        within(10, lambda: store.has(small))


def test_a_damaged_object_names_the_other_repository_and_its_fsck(
    source: LocalStore, tmp_path: Path
) -> None:
    """Not "delete it from the store", which would delete the other repository's own
    copy: its fsck moves it aside, and its fetch restores it."""
    full, _delta, _second = chain(source)
    flip_a_raw_plane_byte(source, full, 0)
    local = LocalStore(tmp_path / "clone" / ".git" / "theta")
    with pytest.raises(TransferFailedError) as raised:
        download(local, RepositoryStore(source.theta_dir), {full: 2 * BLOCK_SIZE}, workers=1)
    (error,) = raised.value.failures.values()
    assert error.oid == full and "is corrupt" in str(error)  # type: ignore[attr-defined]
    assert error.hint == (
        f"run `git theta fsck` in {source.theta_dir.parent.parent}, which moves the damaged copy "
        "aside, then `git theta fetch` there"
    )
    assert not local.has(full)
