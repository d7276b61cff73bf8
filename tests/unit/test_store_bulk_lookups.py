"""Lookups within one operation (docs/store.md, "Lookups within one operation"): the
loose listing of LocalStore.bulk_lookups, and open_all_readable.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as safetensors_save

from git_theta_filter.clean import clean
from git_theta_filter.manifest import Manifest
from git_theta_filter.store.local import LocalStore
from git_theta_filter.store.loose_listing import LooseListing
from git_theta_filter.store.pack import CorruptPackEntryError, PackIndex


def weights(seed: int, count: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(count) * 0.02).astype(np.float32)


def do_clean(store: LocalStore, tensors: dict[str, np.ndarray]) -> Manifest:
    data = safetensors_save(tensors)
    return Manifest.parse(clean(io.BytesIO(data), store, "model.safetensors", warn=print))


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "theta")


def _damage_entry(pack: Path, oid: str) -> None:
    offset, length = PackIndex(pack).find(oid)
    pack.chmod(0o644)
    data = bytearray(pack.read_bytes())
    data[offset + length - 1] ^= 0xFF  # the entry's last payload byte
    pack.write_bytes(bytes(data))


def _small_object_with_a_damaged_packed_copy(store: LocalStore) -> str:
    """Clean a file of two small tensors (one pack), damage the packed copy of the one
    named "small" (weights(2, 100)), and return its oid."""
    manifest = do_clean(store, {"small": weights(2, 100), "other": weights(3, 100)})
    oid = next(t.oid for t in manifest.tensors if t.name == "small")
    [pack] = store.packs()
    _damage_entry(pack, oid)
    return oid


def test_a_repair_this_process_writes_loose_after_the_listing_is_served_first(
    store: LocalStore,
) -> None:
    """The good copy of a damaged pack entry goes loose (LocalStore._add_small); within the
    same operation, lookups must find it although the listing was taken before."""
    oid = _small_object_with_a_damaged_packed_copy(store)
    fresh = LocalStore(store.theta_dir)
    with fresh.bulk_lookups():
        assert fresh.has(oid)  # the listing is taken: no loose copy anywhere
        assert fresh.write_small("F32", (100,), weights(2, 100).tobytes()) == oid
        assert fresh.object_path(oid).is_file()
        fresh.verify(oid)  # the loose copy, not the damaged entry
        with fresh.open_stored(oid) as stored:
            assert stored.owns_file


def test_a_loose_object_present_when_listed_is_served_before_its_packed_copy(
    store: LocalStore,
) -> None:
    oid = _small_object_with_a_damaged_packed_copy(store)
    store.write_small("F32", (100,), weights(2, 100).tobytes())  # the repair, loose
    fresh = LocalStore(store.theta_dir)
    with fresh.bulk_lookups():
        fresh.verify(oid)
        [opened] = list(fresh.open_all_readable([oid]))
        with opened:
            assert opened.owns_file


def test_a_loose_object_another_process_stores_after_the_listing_is_found(
    store: LocalStore,
) -> None:
    """No pack has it, so a lookup that the listing answers "no loose copy" opens the
    loose path after all; has() without look_for_new may miss it (its caller writes a
    second copy)."""
    other_process = LocalStore(store.theta_dir)
    with store.bulk_lookups():
        assert not store.has("ab" * 32)  # the listing is taken
        oid = other_process.write_bytes(b"written meanwhile")
        assert store.has(oid)
        assert not store.has(oid, look_for_new=False)
        with store.open_stored(oid) as stored:
            assert stored.owns_file
        [opened] = list(store.open_all_readable([oid]))
        opened.close()


def test_within_one_operation_a_packed_copy_may_serve_for_a_loose_one_stored_meanwhile(
    store: LocalStore,
) -> None:
    """What docs/store.md says a lookup within one operation may miss."""
    # Damaged, so that another process writes a good copy loose.
    oid = _small_object_with_a_damaged_packed_copy(store)
    with store.bulk_lookups():
        assert store.has(oid)  # the listing is taken
        LocalStore(store.theta_dir).write_small("F32", (100,), weights(2, 100).tobytes())
        assert store.object_path(oid).is_file()
        with store.open_stored(oid) as stored:
            assert not stored.owns_file  # the pack entry; reads of it fail their checks
    with store.open_stored(oid) as stored:
        assert stored.owns_file  # the next operation takes the loose copy


def test_a_fan_out_directory_that_cannot_be_listed_is_looked_up_by_opening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "objects"
    (root / "ab" / "cd").mkdir(parents=True)
    oid = "abcd" + "0" * 60
    listing = LooseListing(os.fspath(root))
    assert not listing.may_hold(oid)  # listed: absent
    real_listdir = os.listdir

    def refuse(path: str) -> list[str]:
        if path.endswith("cd"):
            raise PermissionError(13, "Permission denied", path)
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", refuse)
    assert LooseListing(os.fspath(root)).may_hold(oid)  # unknown: the caller opens
    assert not LooseListing(os.fspath(root)).may_hold("ef" + "0" * 62)


def test_open_all_readable_opens_each_object_once_packed_ones_in_pack_order(
    store: LocalStore,
) -> None:
    tensors = {f"t{i}": weights(i, 300) for i in range(40)}
    tensors["big"] = weights(99, 600 * 1024)  # loose
    manifest = do_clean(store, tensors)
    oids = [splice.oid for splice in manifest.splices]
    ((pack, index),) = store.packs().items()
    with store.bulk_lookups():
        opened = list(store.open_all_readable(oids + oids[:5]))
    try:
        assert sorted(stored.oid for stored in opened) == sorted(set(oids))
        packed = [stored for stored in opened if not stored.owns_file]
        assert [stored.region[1] for stored in packed] == sorted(
            index.find(stored.oid)[0] for stored in packed
        )
        for stored in opened:
            with store.open_readable(stored.oid) as alone:
                assert stored.header == alone.header and stored.encoded == alone.encoded
    finally:
        for stored in opened:
            stored.close()


def test_a_pack_truncated_after_its_index_was_read_is_a_named_error(
    store: LocalStore,
) -> None:
    manifest = do_clean(store, {f"t{i}": weights(i, 300) for i in range(20)})
    ((pack, index),) = store.packs().items()
    oids = [splice.oid for splice in manifest.splices]
    last_oid, last_offset, _length = max(
        (entry for entry in index.entries() if entry[0] in oids), key=lambda entry: entry[1]
    )
    os.truncate(pack, last_offset + 10)  # the last tensor's headers are cut
    with pytest.raises(CorruptPackEntryError) as caught:
        for stored in store.open_all_readable(oids):
            stored.close()
    assert caught.value.oid == last_oid and caught.value.pack == pack
    assert "ends early" in str(caught.value)
