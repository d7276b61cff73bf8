"""The local store with encodings and packs (docs/store.md): what clean writes, what
every reader gets back, and the named errors for damaged packs and chains.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import canonical_bytes, flip_a_raw_plane_byte, sha256_bytes
from safetensors.numpy import save as safetensors_save

from git_theta_filter.clean import clean
from git_theta_filter.errors import ThetaError
from git_theta_filter.manifest import Manifest
from git_theta_filter.smudge import SmudgeVerificationError, prepare_smudge
from git_theta_filter.store import writing
from git_theta_filter.store.encoded import DeltaBaseMissingError, ObjectReader, is_encoded
from git_theta_filter.store.integrity import ObjectCorruptError
from git_theta_filter.store.local import LocalStore, ObjectMissingError, StoreSettings
from git_theta_filter.store.pack import (
    CorruptPackEntryError,
    ObjectNotInPackError,
    PackIndex,
    PackTruncatedError,
)
from git_theta_filter.store.repack import repack, with_delta_bases

BIG = 600 * 1024  # F32 elements: 2.4 MB, over the pack limit


def weights(seed: int, count: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(count) * 0.02).astype(np.float32)


def do_clean(store: LocalStore, data: bytes) -> Manifest:
    return Manifest.parse(clean(io.BytesIO(data), store, "model.safetensors", warn=print))


def smudged(store: LocalStore, manifest: Manifest) -> bytes:
    out = bytearray()
    prepare_smudge(manifest.render(), store, "model.safetensors").write(out.extend)
    return bytes(out)


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "theta")


def test_clean_of_thousands_of_small_tensors_writes_one_pack(store: LocalStore) -> None:
    tensors = {f"layer{i}.w": weights(i, 64) for i in range(3000)}
    data = safetensors_save(tensors)
    manifest = do_clean(store, data)
    assert files_under(store.objects_dir) == []
    packs = files_under(store.packs_dir)
    assert [p.suffix for p in packs] == [".idx", ".pack"]
    assert len(store.packs()) == 1 and len(set(store.iter_oids())) == 3001  # and the skeleton
    assert smudged(store, manifest) == data
    assert files_under(store.tmp_dir) == []


def test_a_damaged_packed_object_is_stored_again_loose_and_served_from_there(
    store: LocalStore,
) -> None:
    """A re-add over a damaged pack entry writes a good copy loose, and lookups take the
    loose copy first, so the file checks out again (LocalStore._add_small)."""
    data = safetensors_save({"small": weights(2, 100), "other": weights(3, 100)})
    manifest = do_clean(store, data)
    oid = next(t.oid for t in manifest.tensors if t.name == "small")
    [pack] = store.packs()
    offset, length = PackIndex(pack).find(oid)
    pack.chmod(0o644)
    damaged = bytearray(pack.read_bytes())
    damaged[offset + length - 1] ^= 0xFF  # the entry's last payload byte
    pack.write_bytes(bytes(damaged))
    with pytest.raises(ThetaError):
        smudged(LocalStore(store.theta_dir), manifest)
    again = do_clean(LocalStore(store.theta_dir), data)
    assert again.render() == manifest.render()
    assert smudged(LocalStore(store.theta_dir), again) == data


def test_a_mix_of_packed_and_loose_encoded_objects_round_trips(store: LocalStore) -> None:
    tensors = {"big": weights(1, BIG), "small": weights(2, 100), "ints": np.arange(10**6)}
    data = safetensors_save(tensors)
    manifest = do_clean(store, data)
    loose = files_under(store.objects_dir)
    assert len(loose) == 2  # big and ints; small and the skeleton are packed
    assert all(is_encoded(path.read_bytes()[:4]) for path in loose)
    assert sum(path.stat().st_size for path in loose) < 0.9 * (BIG * 4 + 8 * 10**6)
    assert smudged(store, manifest) == data
    for entry in manifest.tensors:
        raw = canonical_bytes(store, entry.oid)
        assert sha256_bytes(raw) == entry.oid


def test_compression_off_writes_canonical_objects(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "theta", lambda: StoreSettings(compression=False))
    data = safetensors_save({"big": weights(3, BIG)})
    manifest = do_clean(store, data)
    (loose,) = files_under(store.objects_dir)
    assert sha256_bytes(loose.read_bytes()) == manifest.tensors[0].oid


def versions(count: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    current = weights(8, BIG)
    out = []
    for _ in range(count):
        out.append(safetensors_save({"w": current, "b": weights(9, 10)}))
        current = current + (rng.standard_normal(BIG) * 1e-4).astype(np.float32)
    return out


def test_each_version_is_a_skip_delta_up_to_the_depth_limit(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "theta", lambda: StoreSettings(max_delta_depth=3))
    previous: list[str] = []
    depths = []
    bases = []
    manifests = []
    w_oids = []
    for data in versions(9):
        with store.expecting(previous):
            manifest = do_clean(store, data)
        manifests.append((manifest, data))
        previous = [splice.oid for splice in manifest.splices]
        (w,) = [t for t in manifest.tensors if t.name == "w"]
        with store.open_stored(w.oid) as stored:
            depths.append(stored.depth)
            bases.append(w_oids.index(stored.base_oid) if stored.base_oid else None)
        w_oids.append(w.oid)
    assert depths == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    # Depth d deltas against the version at depth d with its lowest set bit cleared.
    assert bases == [None, 0, 0, 2, None, 4, 4, 6, None]
    full = store.size(manifests[0][0].tensors[1].oid)
    delta = store.size(manifests[1][0].tensors[1].oid)
    assert delta < full
    for manifest, data in manifests:  # the end of a chain decodes like its start
        assert smudged(store, manifest) == data
    for oid in store.iter_oids():
        store.verify(oid)


def test_a_version_equal_to_its_damaged_skip_delta_base_repairs_it(tmp_path: Path) -> None:
    """Version 2 deltas against version 0 (depth 2 against 0): when it has version 0's
    payload, the delta would be its own base. It is stored full instead, over the
    damaged copy, and every version reads back."""
    store = LocalStore(tmp_path / "theta")
    first, second = versions(2)
    manifests = [do_clean(store, first)]
    with store.expecting([splice.oid for splice in manifests[0].splices]):
        manifests.append(do_clean(store, second))
    (w,) = [t.oid for t in manifests[0].tensors if t.name == "w"]
    flip_a_raw_plane_byte(store, w)
    with store.expecting([splice.oid for splice in manifests[1].splices]):
        again = do_clean(store, first)
    assert again.render() == manifests[0].render()
    store.verify(w)
    assert smudged(store, manifests[1]) == second
    assert smudged(store, again) == first


class _MisdecodingReader(ObjectReader):
    """Gives every chunk back with its last byte changed."""

    def read(self, size: int = -1) -> bytes:
        chunk = super().read(size)
        return chunk[:-1] + bytes([chunk[-1] ^ 1]) if chunk else chunk


def test_a_delta_on_itself_that_decodes_to_other_bytes_is_refused_and_not_linked(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payload compared with a damaged copy of its own object becomes a delta against
    that copy, which the writer decodes into a full object before linking it over the
    copy. If the decode gives other bytes than were written (the base changed meanwhile;
    here a reader that misdecodes), the object would not hash to its id: it is refused,
    and the damaged copy stays for fsck to find."""
    payload = weights(8, BIG).tobytes()
    oid = store.write_bytes(payload, "F32", (BIG,))
    flip_a_raw_plane_byte(store, oid)
    damaged = store.object_path(oid).read_bytes()
    with store.expecting([oid]):
        writer = store.writer("F32", (BIG,), len(payload))
        writer.write(payload)
        # Only the decode into the full object reads through this: the comparison's
        # reader was made with the writer.
        monkeypatch.setattr(writing, "ObjectReader", _MisdecodingReader)
        with pytest.raises(ObjectCorruptError) as caught:
            writer.commit()
    assert caught.value.oid == oid
    assert store.object_path(oid).read_bytes() == damaged
    assert files_under(store.tmp_dir) == []


def _two_versions(store: LocalStore) -> tuple[Manifest, Manifest, str, str]:
    first, second = versions(2)
    old = do_clean(store, first)
    with store.expecting([splice.oid for splice in old.splices]):
        new = do_clean(store, second)
    base = next(t.oid for t in old.tensors if t.name == "w")
    delta = next(t.oid for t in new.tensors if t.name == "w")
    return old, new, base, delta


def test_a_missing_delta_base_fails_smudge_before_output_and_fsck_finds_it(
    store: LocalStore,
) -> None:
    _old, new, base, delta = _two_versions(store)
    assert with_delta_bases(store, {delta}) == {delta, base}
    os.remove(store.object_path(base))
    with pytest.raises(DeltaBaseMissingError) as caught:
        prepare_smudge(new.render(), store, "model.safetensors")
    assert caught.value.oid == delta and caught.value.base == base
    with pytest.raises(DeltaBaseMissingError):
        store.verify(delta)


def _damage_the_first_pack_entry(
    store: LocalStore, count: int, damage: Callable[[bytearray, int, int], None]
) -> tuple[Manifest, Path, str]:
    """Clean ``count`` small tensors into one pack, then let ``damage`` change the pack's
    bytes given its first entry's offset and length: the manifest, the pack and that
    entry's id."""
    manifest = do_clean(store, safetensors_save({f"t{i}": weights(i, 300) for i in range(count)}))
    ((pack, index),) = store.packs().items()
    oid, offset, length = next(index.entries())
    data = bytearray(pack.read_bytes())
    damage(data, offset, length)
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    return manifest, pack, oid


def test_a_corrupt_pack_entry_is_a_named_error(store: LocalStore) -> None:
    def flip_a_byte(data: bytearray, offset: int, length: int) -> None:
        data[offset + length - 3] ^= 0xFF  # inside the entry's last plane

    manifest, pack, oid = _damage_the_first_pack_entry(store, 20, flip_a_byte)
    with pytest.raises(CorruptPackEntryError) as caught:
        store.verify_packed(pack, oid)
    assert caught.value.oid == oid and caught.value.pack == pack
    assert pack.name in str(caught.value)
    with pytest.raises(SmudgeVerificationError):  # smudge hashes the whole file instead
        smudged(store, manifest)


def test_a_pack_entry_whose_headers_are_damaged_is_a_named_error(store: LocalStore) -> None:
    """Damage that stops the entry from opening at all, not only from decoding: fsck
    must still learn which pack holds it, to move that pack aside."""

    def zero_the_header(data: bytearray, offset: int, _length: int) -> None:
        data[offset : offset + 8] = bytes(8)  # the entry's first bytes: a zero-length header

    _manifest, pack, oid = _damage_the_first_pack_entry(store, 3, zero_the_header)
    with pytest.raises(CorruptPackEntryError) as caught:
        store.verify_packed(pack, oid)
    assert caught.value.oid == oid and caught.value.pack == pack
    assert pack.name in str(caught.value)


def test_verify_packed_of_an_object_stored_loose_but_not_in_that_pack_names_the_pack(
    store: LocalStore,
) -> None:
    """The caller asked about one pack's entry: the answer is that the pack does not hold
    the object, not that the store lacks it (it is right there, loose)."""
    data = safetensors_save({"big": weights(1, BIG), "small": weights(2, 100)})
    manifest = do_clean(store, data)
    loose = next(t.oid for t in manifest.tensors if t.name == "big")
    [pack] = store.packs()
    assert PackIndex(pack).find(loose) is None
    store.verify(loose)  # stored, and good
    with pytest.raises(ObjectNotInPackError) as caught:
        store.verify_packed(pack, loose)
    assert not isinstance(caught.value, ObjectMissingError)
    assert (caught.value.oid, caught.value.pack) == (loose, pack)
    assert str(caught.value) == f"pack {pack.name} does not hold object {loose}"
    assert "`git theta fsck`" in (caught.value.hint or "")


def test_a_truncated_pack_is_a_named_error_and_its_objects_are_not_served(
    store: LocalStore,
) -> None:
    do_clean(store, safetensors_save({f"t{i}": weights(i, 300) for i in range(20)}))
    ((pack, index),) = store.packs().items()
    oid = next(index.entries())[0]
    size = pack.stat().st_size
    os.truncate(pack, size - 100)
    fresh = LocalStore(store.theta_dir)
    assert not fresh.has(oid)
    ((broken, error),) = fresh.broken_packs().items()
    assert broken == pack and isinstance(error, PackTruncatedError)
    assert "runs past the end of the pack" in str(error) and "git theta fsck" in error.hint


def test_canonical_file_gives_the_canonical_bytes_of_any_stored_form(store: LocalStore) -> None:
    _old, new, _base, delta = _two_versions(store)
    for tensor in new.tensors:
        with store.canonical_file(tensor.oid) as path:
            assert sha256_bytes(path.read_bytes()) == tensor.oid
    assert store.canonical_size(delta) == len(canonical_bytes(store, delta))
    assert files_under(store.tmp_dir) == []


def test_repack_puts_packs_and_small_loose_objects_into_one(store: LocalStore) -> None:
    manifests = [
        (do_clean(store, data), data)
        for data in (
            safetensors_save({f"a{i}": weights(i, 200) for i in range(10)}),
            safetensors_save({f"b{i}": weights(100 + i, 200) for i in range(10)}),
        )
    ]
    store.write_bytes(b"a small loose object")  # outside a clean: loose
    before = set(store.iter_oids())
    assert len(store.packs()) == 2
    report = repack(store)
    assert (report.packs_removed, report.loose_removed) == (2, 1)
    assert len(store.packs()) == 1 and set(store.iter_oids()) == before
    assert files_under(store.objects_dir) == []
    for manifest, data in manifests:
        assert smudged(store, manifest) == data
    assert repack(store).packed_objects == 0  # already one pack: nothing to do


def test_repack_encodes_a_large_object_that_was_stored_canonical(tmp_path: Path) -> None:
    plain = LocalStore(tmp_path / "theta", lambda: StoreSettings(compression=False))
    data = safetensors_save({"big": weights(4, BIG)})
    manifest = do_clean(plain, data)
    oid = manifest.tensors[0].oid
    canonical_size = plain.size(oid)
    store = LocalStore(tmp_path / "theta")  # as after a fetch: canonical, then repacked
    assert repack(store).encoded_loose == 1
    assert store.size(oid) < 0.95 * canonical_size
    assert is_encoded(store.object_path(oid).read_bytes()[:4])
    assert smudged(store, manifest) == data
    assert repack(store).encoded_loose == 0


def test_settings_read_on_another_thread_are_waited_for_not_read_again(tmp_path: Path) -> None:
    """The filter reads the store's settings beside a large clean; the clean asking for
    them while that read runs waits for it instead of running a second git process."""
    import threading

    reading, release = threading.Event(), threading.Event()
    reads: list[str] = []

    def slow_settings() -> StoreSettings:
        reads.append(threading.current_thread().name)
        reading.set()
        release.wait(timeout=10)
        return StoreSettings(max_delta_depth=3)

    store = LocalStore(tmp_path / "theta", slow_settings)
    beside = threading.Thread(target=lambda: store.settings, name="beside")
    beside.start()
    assert reading.wait(timeout=10)
    threading.Timer(0.2, release.set).start()
    assert store.settings.max_delta_depth == 3  # waited for the read in progress
    beside.join()
    assert reads == ["beside"]
