"""A payload compared with a version 2 expected object by its block digests
(store/writing.py; docs/store.md, "Encoded objects", rules 5 and 7): the ids a plain
write gives, wherever a change falls and however the payload's chunks fall, without
decoding the expected object; and a damaged or mislabelled stored copy is written again.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from helpers import flip_a_raw_plane_byte, within
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from git_theta_filter.errors import ThetaError
from git_theta_filter.store import encoded as encoded_module
from git_theta_filter.store.encoded import (
    BLOCK_SIZE,
    VERSION_DIGESTED,
    VERSION_PLAIN,
    EncodingWriter,
    StoredObject,
    write_digested,
)
from git_theta_filter.store.local import LocalStore
from git_theta_filter.store.object_format import ObjectFormatError, encode_header
from git_theta_filter.store.repack import repack
from git_theta_filter.store.writing import UnbufferedOutput

ELEMENTS = (2 * BLOCK_SIZE + BLOCK_SIZE // 2) // 4  # F32: two and a half blocks
SHAPE = (ELEMENTS,)
NBYTES = 4 * ELEMENTS


def weights(seed: int) -> bytes:
    return np.random.default_rng(seed).standard_normal(ELEMENTS, dtype=np.float32).tobytes()


def oid_of(payload: bytes) -> str:
    return hashlib.sha256(encode_header("F32", SHAPE, len(payload)) + payload).hexdigest()


def write(store: LocalStore, payload: bytes, chunks: list[int]) -> str:
    """Write ``payload`` through a writer in chunks of the given sizes, taken in turn."""
    writer = store.writer("F32", SHAPE, len(payload))
    position, turn = 0, 0
    while position < len(payload):
        size = chunks[turn % len(chunks)]
        writer.write(payload[position : position + size])
        position += size
        turn += 1
    return writer.commit()


def stored(store: LocalStore, oid: str) -> StoredObject:
    found = store.open_stored(oid)
    assert found is not None
    return found


def read_back(store: LocalStore, oid: str) -> bytes:
    file, _header = store.open_object(oid)
    with file:
        return file.read()


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "theta")


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the objects whose blocks get decoded."""
    seen: list[str] = []
    original = StoredObject.decoded_block

    def counting(self, index, out=None, checked=False):
        seen.append(self.oid)
        return original(self, index, out, checked)

    monkeypatch.setattr(StoredObject, "decoded_block", counting)
    return seen


def test_large_objects_record_digests_and_small_ones_do_not(store: LocalStore) -> None:
    large = write(store, weights(0), [BLOCK_SIZE])
    small = store.write_bytes(weights(0)[: 64 << 10], "F32", ((64 << 10) // 4,))
    with stored(store, large) as big, stored(store, small) as little:
        assert big.encoded is not None and big.encoded.version == VERSION_DIGESTED
        assert little.encoded is None or little.encoded.version == VERSION_PLAIN
        assert big.digested_chain() and not little.digested_chain()


def test_an_unchanged_payload_is_compared_without_decoding_its_previous_version(
    store: LocalStore, decodes: list[str]
) -> None:
    payload = weights(1)
    oid = write(store, payload, [BLOCK_SIZE])
    with store.expecting([oid]):
        assert write(store, payload, [300_000]) == oid
    assert decodes == []


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    changes=st.lists(st.integers(0, NBYTES - 1), max_size=3),
    chunks=st.lists(
        st.one_of(
            st.sampled_from([BLOCK_SIZE, BLOCK_SIZE - 1, BLOCK_SIZE + 1, NBYTES]),
            st.integers(1000, 3 * BLOCK_SIZE),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_a_payload_compared_by_digest_gets_the_id_of_its_bytes(
    tmp_path_factory: pytest.TempPathFactory, changes: list[int], chunks: list[int]
) -> None:
    """Changes at any byte (a block's first or last, or none), chunks of any size: the
    id is the sha256 of the bytes written, and the object reads back as them."""
    store = LocalStore(tmp_path_factory.mktemp("store") / "theta")
    base = weights(2)
    previous = write(store, base, [BLOCK_SIZE])
    new = bytearray(base)
    for position in changes:
        new[position] ^= 0x40
    with store.expecting([previous]):
        oid = write(store, bytes(new), chunks)
    assert oid == oid_of(bytes(new))
    assert (oid == previous) == (bytes(new) == base)
    store.verify(oid)
    assert read_back(store, oid) == bytes(new)


@example(received=BLOCK_SIZE + 500_000, change=BLOCK_SIZE + 1000, chunk=300_000)
@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    received=st.integers(1, NBYTES - 1),
    change=st.one_of(st.none(), st.integers(0, NBYTES - 1)),
    chunk=st.integers(1000, 2 * BLOCK_SIZE),
)
def test_a_payload_that_ends_early_keeps_the_bytes_that_came(
    tmp_path_factory: pytest.TempPathFactory, received: int, change: int | None, chunk: int
) -> None:
    """The input ends inside a block: the bytes of it that came were only kept, never
    compared by digest, and are what the U8 object of the received bytes holds."""
    store = LocalStore(tmp_path_factory.mktemp("store") / "theta")
    base = weights(3)
    previous = write(store, base, [BLOCK_SIZE])
    new = bytearray(base)
    if change is not None:
        new[change] ^= 0x40
    came = bytes(new[:received])
    with store.expecting([previous]):
        writer = store.writer("F32", SHAPE, NBYTES)
        for start in range(0, received, chunk):
            writer.write(came[start : start + chunk])
        oid = writer.commit_received()
    assert read_back(store, oid) == came


@pytest.mark.parametrize("block", [0, 2])
def test_a_damaged_copy_of_the_same_payload_is_written_again(store: LocalStore, block: int) -> None:
    """The stored records no longer hash to their digest: the block differs as far as the
    comparison can tell, so the payload is stored again, over the damaged copy."""
    payload = weights(4)
    oid = write(store, payload, [BLOCK_SIZE])
    flip_a_raw_plane_byte(store, oid, block)
    with pytest.raises(ObjectFormatError, match=f"block {block}"):
        store.verify(oid)
    with store.expecting([oid]):
        assert write(store, payload, [BLOCK_SIZE]) == oid
    store.verify(oid)
    assert read_back(store, oid) == payload


@pytest.mark.parametrize(
    ("digest", "message"),
    [(0, "block 1 does not match its digest"), (32, "block 1's records do not match")],
    ids=["payload", "records"],
)
def test_a_digest_that_lies_is_found_by_verify_and_replaced_by_a_rewrite(
    store: LocalStore, digest: int, message: str
) -> None:
    """One of block 1's digests is changed, its bytes are not: verify (and so fsck) names
    the object, and a clean of the same payload stores it again."""
    payload = weights(5)
    oid = write(store, payload, [BLOCK_SIZE])
    with stored(store, oid) as object_:
        assert object_.encoded is not None
        entry = object_.encoded.digests_offset + 64 * 1 + digest
    path = store.object_path(oid)
    data = bytearray(path.read_bytes())
    data[entry] ^= 1
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(ObjectFormatError, match=message):
        store.verify(oid)
    with store.expecting([oid]):
        assert write(store, payload, [BLOCK_SIZE]) == oid
    store.verify(oid)


def test_a_delta_on_a_version_1_base_is_compared_by_decoding(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch, decodes: list[str]
) -> None:
    """A store written before digests: the new version's delta records them, its base
    does not, so nothing tells what the delta's blocks decode to but decoding them."""
    with monkeypatch.context() as patch:
        patch.setattr(encoded_module, "version_for", lambda size: VERSION_PLAIN)
        first = write(store, weights(6), [BLOCK_SIZE])
    second_payload = bytearray(weights(6))
    second_payload[10] ^= 0x40
    with store.expecting([first]):
        second = write(store, bytes(second_payload), [BLOCK_SIZE])
    with stored(store, second) as delta:
        assert delta.encoded is not None and delta.encoded.version == VERSION_DIGESTED
        assert delta.base_oid == first and not delta.digested_chain()
    decodes.clear()
    with store.expecting([second]):
        assert write(store, bytes(second_payload), [BLOCK_SIZE]) == second
    assert second in decodes


def version_1_chain(store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bytes]]:
    """Three versions written as a store did before digests: a full object and two
    deltas on it (skip deltas: both on the full one), in version 1."""
    versions = [weights(13)]
    for position in (10, 22):
        changed = bytearray(versions[-1])
        changed[position] ^= 0x40
        versions.append(bytes(changed))
    oids: list[str] = []
    with monkeypatch.context() as patch:
        patch.setattr(encoded_module, "version_for", lambda size: VERSION_PLAIN)
        for version in versions:
            with store.expecting(oids[-1:]):
                oids.append(write(store, version, [BLOCK_SIZE]))
    return list(zip(oids, versions, strict=True))


def test_repack_gives_large_objects_of_version_1_their_digests(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch, decodes: list[str]
) -> None:
    """The same blocks after a table of digests, checked before they replace the old
    file: the chain is then compared by digest, as if it had been written so."""
    chain = version_1_chain(store, monkeypatch)
    records = {}
    for oid, _payload in chain:
        with stored(store, oid) as object_:
            assert object_.encoded is not None and object_.encoded.version == VERSION_PLAIN
            records[oid] = [object_._block_records(i) for i in range(object_.encoded.block_count)]
    assert repack(store, dry_run=True).digested == 3
    assert all(stored(store, oid).encoded.version == VERSION_PLAIN for oid, _ in chain)  # type: ignore[union-attr]
    assert repack(store).digested == 3
    for oid, payload in chain:
        with stored(store, oid) as object_:
            assert object_.encoded is not None and object_.encoded.version == VERSION_DIGESTED
            assert object_.digested_chain()
            count = object_.encoded.block_count
            assert [object_._block_records(i) for i in range(count)] == records[oid]
        store.verify(oid)
        assert read_back(store, oid) == payload
    assert repack(store).digested == 0
    top, payload = chain[-1]
    decodes.clear()
    with store.expecting([top]):
        assert write(store, payload, [BLOCK_SIZE]) == top
    assert decodes == []


def test_repack_leaves_a_damaged_object_of_version_1_as_it_was_and_names_it(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Digests taken from a damaged copy would vouch for its damage: the rewrite is
    checked against the id first, and refused."""
    chain = version_1_chain(store, monkeypatch)
    victim = chain[0][0]
    flip_a_raw_plane_byte(store, victim, 1)
    damaged = store.object_path(victim).read_bytes()
    with pytest.raises(ObjectFormatError, match=victim):
        repack(store)
    assert store.object_path(victim).read_bytes() == damaged


def test_digests_are_not_given_to_a_delta_that_decodes_to_other_bytes(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delta of version 1 on a damaged base (as a packed one is given its digests, with
    no later check of the copy): refused by its id before any digest is written."""
    chain = version_1_chain(store, monkeypatch)
    flip_a_raw_plane_byte(store, chain[0][0], 1)
    delta = chain[2][0]
    out = io.BytesIO()
    with pytest.raises(ObjectFormatError, match=delta):
        write_digested(stored(store, delta), out)


def test_a_delta_on_a_base_in_other_blocks_is_compared_by_decoding(
    store: LocalStore, decodes: list[str]
) -> None:
    """Digests are per block: a base of another block size has other blocks."""
    base_payload = weights(7)
    header = encode_header("F32", SHAPE, NBYTES)
    base_oid = write(store, base_payload, [BLOCK_SIZE])
    with stored(store, base_oid) as base:
        object_header = base.header
    # The same object again, in half-size blocks, under a second store's name for it.
    other = LocalStore(store.theta_dir.parent / "other")
    file, tmp_path = other._open_temp()
    writer = EncodingWriter(
        UnbufferedOutput(file), header, object_header, 4, block_size=BLOCK_SIZE // 2
    )
    writer.write(base_payload)
    writer.finish(base_oid)
    other._link_temp(file, tmp_path, base_oid)
    changed = bytearray(base_payload)
    changed[-1] ^= 0x40
    with other.expecting([base_oid]):
        delta_oid = write(other, bytes(changed), [BLOCK_SIZE])
    with stored(other, delta_oid) as delta:
        assert delta.base_oid == base_oid and not delta.digested_chain()
    decodes.clear()
    with other.expecting([delta_oid]):
        assert write(other, bytes(changed), [BLOCK_SIZE]) == delta_oid
    assert delta_oid in decodes


def test_chunks_queued_behind_a_difference_are_taken_as_they_came(store: LocalStore) -> None:
    """A change in block 0 and one in block 1: when the writer takes block 0's difference,
    later chunks were already queued, one of them part of block 1, whose difference no
    digest has told yet. They are taken as they came, not from the expected object."""
    base = weights(9)
    previous = write(store, base, [BLOCK_SIZE])
    new = bytearray(base)
    new[10] ^= 0x40
    new[1_300_000] ^= 0x40
    with store.expecting([previous]):
        oid = write(store, bytes(new), [300_000])
    assert oid == oid_of(bytes(new))
    assert read_back(store, oid) == bytes(new)


def test_a_delta_whose_base_was_damaged_is_written_again_without_the_damaged_block(
    store: LocalStore,
) -> None:
    """The delta's own records are intact, but a plane it takes from its base is not:
    it no longer decodes to its payload, so a clean of that payload stores it again,
    taking nothing from the damaged block of the base: once the base is restored, the
    new delta still reads back."""
    first = weights(10)
    base = write(store, first, [BLOCK_SIZE])
    second = bytearray(first)
    second[10] ^= 0x40  # plane 2 of one element: the delta takes the other planes as they were
    with store.expecting([base]):
        delta = write(store, bytes(second), [BLOCK_SIZE])
    with stored(store, delta) as object_:
        assert object_.base_oid == base and object_.digested_chain()
    good_base = store.object_path(base).read_bytes()
    flip_a_raw_plane_byte(store, base, 0)
    with pytest.raises(ObjectFormatError):
        store.verify(delta)
    with store.expecting([delta]):
        assert write(store, bytes(second), [BLOCK_SIZE]) == delta
    store.verify(delta)
    assert read_back(store, delta) == bytes(second)
    # fsck moves the damaged base aside and fetch brings the good one back: the delta
    # written meanwhile took nothing from the damaged block, so it still reads back.
    store.object_path(base).write_bytes(good_base)
    store.verify(base)
    store.verify(delta)
    assert read_back(store, delta) == bytes(second)


def test_a_delta_takes_nothing_from_a_block_damaged_further_down_its_base_chain(
    store: LocalStore,
) -> None:
    """The delta base's own records are intact, but a plane it decodes from its own base
    was damaged: the new delta's block is stored from its own bytes, so it still reads
    back once the damaged object is restored. (Skip deltas: versions at depths 1 and 2
    are written against the full one, the version at depth 3 against depth 2's.)"""
    versions = [weights(12)]
    for position in (10, 22, 34):  # plane 2 of an element: plane 0 is taken as it was
        changed = bytearray(versions[-1])
        changed[position] ^= 0x40
        versions.append(bytes(changed))
    oids = [write(store, versions[0], [BLOCK_SIZE])]
    for version in versions[1:3]:
        with store.expecting([oids[-1]]):
            oids.append(write(store, version, [BLOCK_SIZE]))
    bottom, base = oids[0], oids[2]
    good_bottom = store.object_path(bottom).read_bytes()
    flip_a_raw_plane_byte(store, bottom, 0)
    with stored(store, base) as object_:
        assert object_.base_oid == bottom
        assert object_.records_intact(0, down_chain=False) and not object_.records_intact(0)
    with store.expecting([base]):
        top = write(store, versions[3], [BLOCK_SIZE])
    with stored(store, top) as object_:
        assert object_.base_oid == base
    store.object_path(bottom).write_bytes(good_bottom)
    store.verify(top)
    assert read_back(store, top) == versions[3]


def test_a_payload_longer_than_its_previous_version_is_refused_by_its_length(
    store: LocalStore,
) -> None:
    """A writer handed more bytes than its size (a caller's bug), here past the end of an
    object of whole blocks: the comparison takes them for a difference, and the commit
    names the length."""
    elements = 2 * BLOCK_SIZE // 4
    shape, nbytes = (elements,), 4 * elements
    payload = np.random.default_rng(11).standard_normal(elements, dtype=np.float32).tobytes()
    writer = store.writer("F32", shape, nbytes)
    writer.write(payload)
    previous = writer.commit()

    def overlong() -> None:
        with store.expecting([previous]):
            writer = store.writer("F32", shape, nbytes)
            writer.write(payload[: BLOCK_SIZE // 2])
            writer.write(payload[BLOCK_SIZE // 2 :] + bytes(BLOCK_SIZE))
            with pytest.raises(ThetaError, match=f"expected {nbytes}"):
                writer.commit()

    within(20.0, overlong)
