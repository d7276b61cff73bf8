"""The clean cache (clean_cache.py, docs/store.md "Clean cache"): a hit is exactly what a
clean of the same bytes gives, and anything else is a miss."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import loose_object
from safetensors.numpy import save as safetensors_save

from git_theta_filter import clean_cache
from git_theta_filter.clean import clean
from git_theta_filter.clean_cache import CleanCache, Prefixed, read_up_to
from git_theta_filter.manifest import Manifest
from git_theta_filter.store.local import LocalStore


def model_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return safetensors_save(
        {"a": rng.standard_normal((64, 32)).astype(np.float32), "b": np.arange(8, dtype=np.int64)}
    )


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "theta")


def cleaned(store: LocalStore, cache: CleanCache, data: bytes) -> bytes:
    """What the filter does on a miss: clean, then remember."""
    manifest = clean(io.BytesIO(data), store, "model.safetensors", warn=lambda message: None)
    cache.remember(data, manifest)
    return manifest


def test_clean_cache_answers_the_same_bytes_with_the_manifest_clean_gave(
    store: LocalStore,
) -> None:
    cache = CleanCache(store.theta_dir)
    data = model_bytes(0)
    assert cache.lookup(data, store) is None
    manifest = cleaned(store, cache, data)
    assert cache.lookup(data, store) == manifest
    assert cache.lookup(model_bytes(1), store) is None
    changed = bytearray(data)
    changed[-1] ^= 1  # same size, one bit: another sha256
    assert cache.lookup(bytes(changed), store) is None


def test_clean_cache_refuses_an_entry_for_other_bytes_or_another_version(
    store: LocalStore,
) -> None:
    cache = CleanCache(store.theta_dir)
    first, second = model_bytes(0), model_bytes(1)
    cleaned(store, cache, first)
    cleaned(store, cache, second)
    first_entry = cache.directory / Manifest.parse(cache.lookup(first, store) or b"").sha256
    second_entry = cache.directory / Manifest.parse(cache.lookup(second, store) or b"").sha256
    # An entry under the other file's name: its manifest names other bytes.
    os.replace(first_entry, second_entry)
    assert cache.lookup(second, store) is None
    # Another version of git-theta wrote it: its clean may differ.
    cleaned(store, cache, second)
    first_line, rest = second_entry.read_bytes().split(b"\n", 1)
    other_version = b"git-theta-cleaned 1 " + b"9" * len(first_line.split(b" ")[2])
    second_entry.write_bytes(other_version + b"\n" + rest)
    assert cache.lookup(second, store) is None
    second_entry.write_bytes(b"git-theta-cleaned 1 x\nnot a manifest\n")
    assert cache.lookup(second, store) is None


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_clean_cache_misses_when_an_object_is_missing_or_damaged(
    store: LocalStore, damage: str
) -> None:
    """A clean would write the object again; the cache must not answer in its place."""
    cache = CleanCache(store.theta_dir)
    data = model_bytes(0)
    manifest = Manifest.parse(cleaned(store, cache, data))
    path = loose_object(store, manifest.splices[0].oid)
    if damage == "missing":
        path.unlink()
    else:
        os.chmod(path, 0o644)
        good = path.read_bytes()
        path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert cache.lookup(data, store) is None
    assert cleaned(store, cache, data) == manifest.render()
    assert cache.lookup(data, store) == manifest.render()  # the clean put it back


def test_clean_cache_keeps_no_passthrough_manifest_and_only_the_newest_entries(
    store: LocalStore, monkeypatch
) -> None:
    monkeypatch.setattr(clean_cache, "MAX_ENTRIES", 3)
    cache = CleanCache(store.theta_dir)
    manifest = cleaned(store, cache, model_bytes(0))
    cache.remember(manifest, manifest)  # clean(manifest) passes it through: not a file's manifest
    assert cache.lookup(manifest, store) is None
    for seed in range(1, 6):
        cleaned(store, cache, model_bytes(seed))
    assert len(os.listdir(cache.directory)) == 3
    assert cache.lookup(model_bytes(5), store) is not None


def test_clean_cache_reads_only_a_regular_file(store: LocalStore, tmp_path: Path) -> None:
    cache = CleanCache(store.theta_dir)
    data = model_bytes(0)
    manifest = cleaned(store, cache, data)
    entry = cache.directory / Manifest.parse(manifest).sha256
    elsewhere = tmp_path / "elsewhere"
    os.replace(entry, elsewhere)
    entry.symlink_to(elsewhere)
    assert cache.lookup(data, store) is None
    entry.unlink()
    os.mkfifo(entry)  # never blocks: opened without waiting for a writer
    assert cache.lookup(data, store) is None
    entry.unlink()
    entry.mkdir()
    assert cache.lookup(data, store) is None


def test_read_up_to_and_prefixed_give_back_every_byte() -> None:
    data = bytes(range(256)) * 5000
    source = io.BytesIO(data)
    head = read_up_to(source, 300_001)
    assert bytes(head) == data[:300_001]
    rest = Prefixed(head, source)
    out = bytearray()
    buffer = memoryview(bytearray(70_000))
    while count := rest.readinto(buffer):
        out += buffer[:count]
    assert bytes(out) == data
    assert bytes(read_up_to(io.BytesIO(b"short"), 100)) == b"short"
