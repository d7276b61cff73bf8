"""Encoded objects (docs/store.md): round trips, delta chains, the canonical fallback, errors."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from git_theta_filter.store.encoded import (
    BLOCK_SIZE,
    DeltaBaseMissingError,
    EncodedHeader,
    EncodingWriter,
    ObjectReader,
    SmallObjectOutlook,
    StoredObject,
    encode_whole,
    width_for,
)
from git_theta_filter.store.object_format import (
    ObjectFormatError,
    encode_header,
    parse_header_bytes,
)

BLOCK = 4096


class Objects:
    """Stored objects in files of a temp dir, opened the way the local store opens them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def canonical(self, array: np.ndarray, dtype: str) -> tuple[str, bytes]:
        payload = array.tobytes()
        data = encode_header(dtype, array.shape, len(payload)) + payload
        return hashlib.sha256(data).hexdigest(), data

    def put(self, data: bytes, dtype: str, base: str | None = None, chunk: int = 1000) -> str:
        oid = hashlib.sha256(data).hexdigest()
        header = parse_header_bytes(oid, data, len(data))
        out = io.BytesIO()
        writer = EncodingWriter(
            out,
            data[: header.data_offset],
            header,
            width_for(dtype, header.nbytes),
            self.open(base) if base else None,
            block_size=BLOCK,
        )
        payload = memoryview(data)[header.data_offset :]
        for start in range(0, len(payload), chunk):
            writer.write(payload[start : start + chunk])
        writer.finish(oid)
        self.write(oid, out.getvalue())
        return oid

    def write(self, oid: str, stored: bytes) -> None:
        (self.directory / oid).write_bytes(stored)

    def stored(self, oid: str) -> bytes:
        return (self.directory / oid).read_bytes()

    def open(self, oid: str) -> StoredObject | None:
        path = self.directory / oid
        if not path.exists():
            return None
        fd = os.open(path, os.O_RDONLY)
        return StoredObject(oid, fd, 0, os.fstat(fd).st_size, self.open, owns_fd=True)

    def read(self, oid: str) -> bytes:
        reader = ObjectReader(self.open(oid))
        reader.seek(0)
        return reader.read()

    def close(self) -> None:
        """Nothing to do: every StoredObject closes its own file."""


@pytest.fixture
def objects(tmp_path: Path):
    store = Objects(tmp_path)
    yield store
    store.close()


def _weights(seed: int, shape=(3000,), dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.02).astype(dtype)


@pytest.mark.parametrize(
    "dtype, numpy_dtype",
    [("F32", np.float32), ("F16", np.float16), ("F64", np.float64), ("I64", np.int64)],
)
def test_full_objects_round_trip_byte_exact(objects: Objects, dtype: str, numpy_dtype) -> None:
    oid, data = objects.canonical(_weights(0, (2500,), numpy_dtype), dtype)
    assert objects.put(data, dtype) == oid
    assert objects.read(oid) == data


def test_bf16_and_u8_objects_round_trip(objects: Objects) -> None:
    bf16 = (_weights(1).view(np.uint32) >> 16).astype(np.uint16)
    for array, dtype in ((bf16, "BF16"), (np.arange(5000, dtype=np.uint8), "U8")):
        oid, data = objects.canonical(array, dtype)
        objects.put(data, dtype)
        assert objects.stored(oid)[:4] == b"\x89thz"
        assert objects.read(oid) == data


def test_delta_chain_of_ten_versions_round_trips_and_is_smaller(objects: Objects) -> None:
    rng = np.random.default_rng(2)
    weights = _weights(3, (5000,))
    previous = None
    for depth in range(11):
        oid, data = objects.canonical(weights, "F32")
        objects.put(data, "F32", base=previous)
        stored = objects.stored(oid)
        assert stored[7] == depth  # the depth byte
        assert objects.read(oid) == data
        if previous:
            assert len(stored) < 0.9 * len(data)
        previous = oid
        weights = weights + (rng.standard_normal(weights.shape) * 1e-4).astype(np.float32)


def test_a_delta_may_skip_depths_but_never_sit_at_or_above_its_base(objects: Objects) -> None:
    base_oid, base_data = objects.canonical(_weights(3, (5000,)), "F32")
    objects.put(base_data, "F32")
    _oid, data = objects.canonical(_weights(3, (5000,)) + np.float32(1e-4), "F32")
    header = parse_header_bytes("0" * 64, data, len(data))
    for depth in (0, 256):
        with pytest.raises(ValueError, match=f"depth {depth}"):
            EncodingWriter(
                io.BytesIO(), data[: header.data_offset], header, 4, objects.open(base_oid),
                depth=depth,
            )  # fmt: skip
    oid = hashlib.sha256(data).hexdigest()
    out = io.BytesIO()
    writer = EncodingWriter(
        out, data[: header.data_offset], header, 4, objects.open(base_oid), BLOCK, depth=6
    )
    writer.write(data[header.data_offset :])
    writer.finish(oid)
    objects.write(oid, out.getvalue())
    assert objects.stored(oid)[7] == 6
    assert objects.read(oid) == data


def test_reader_seeks_into_any_block_and_reads_across_blocks(objects: Objects) -> None:
    oid, data = objects.canonical(_weights(4, (7000,)), "F32")
    objects.put(data, "F32")
    reader = ObjectReader(objects.open(oid))
    header_size = reader.tell()
    for start, size in ((0, 10), (BLOCK - 3, 10), (5 * BLOCK + 1, 3 * BLOCK), (len(data) - 5, 99)):
        reader.seek(start)
        assert reader.read(size) == data[start : start + size]
    assert header_size == parse_header_bytes(oid, data, len(data)).data_offset


def test_incompressible_payload_is_stored_canonical(objects: Objects) -> None:
    noise = np.random.default_rng(5).integers(0, 256, 3 * BLOCK, dtype=np.uint8)
    oid, data = objects.canonical(noise, "U8")
    objects.put(data, "U8")
    assert objects.stored(oid) == data


@pytest.mark.parametrize("values, encoded", [(100, True), (150, False)])
def test_a_small_object_is_encoded_only_when_that_saves_a_tenth(values: int, encoded: bool) -> None:
    """Random bytes below 100 compress to about 0.84 of their size, below 150 to about
    0.91: enough for a large object (0.97), not for a small one, which costs a decoding
    call of its own at every checkout (docs/store.md, rule 4 of "Encoded objects")."""
    array = np.random.default_rng(13).integers(0, values, 16384, dtype=np.uint8)
    data = encode_header("U8", array.shape, array.nbytes) + array.tobytes()
    oid = hashlib.sha256(data).hexdigest()
    header = parse_header_bytes(oid, data, len(data))
    stored = encode_whole(oid, data[: header.data_offset], header, array.tobytes())
    assert (stored != data) is encoded
    assert (len(stored) < 0.9 * len(data)) is encoded


def _stored_small(array: np.ndarray, dtype: str, outlook: SmallObjectOutlook) -> bool:
    """Whether encode_whole stores ``array`` encoded (True) or canonical, with ``outlook``."""
    data = encode_header(dtype, array.shape, array.nbytes) + array.tobytes()
    oid = hashlib.sha256(data).hexdigest()
    header = parse_header_bytes(oid, data, len(data))
    return encode_whole(oid, data[: header.data_offset], header, array.tobytes(), outlook) != data


def test_after_a_run_of_small_objects_that_do_not_compress_only_every_32nd_is_tried() -> None:
    """docs/store.md, rule 4 of "Encoded objects": a compressible object that comes
    after 33 that did not compress is stored canonical until the next one tried, and
    from that one on each is tried again; another dtype keeps its own count."""
    outlook, noise = SmallObjectOutlook(), np.random.default_rng(3)
    for _ in range(SmallObjectOutlook.TRIED_UNTIL + 1):
        assert not _stored_small(noise.standard_normal(4096).astype(np.float32), "F32", outlook)
    zeros = [_stored_small(np.zeros(4096, np.float32), "F32", outlook) for _ in range(64)]
    # Skipped while the count of failures runs from 33 to 63; the 32nd after the last try
    # is tried, compresses, and resets the count.
    first_tried = SmallObjectOutlook.TRIED_EVERY - 1
    assert zeros == [False] * first_tried + [True] * (64 - first_tried)
    assert _stored_small(np.zeros(4096, np.uint8), "U8", outlook)  # its own count: tried


def test_empty_payload_is_stored_canonical(objects: Objects) -> None:
    oid, data = objects.canonical(np.zeros(0, np.float32), "F32")
    objects.put(data, "F32")
    assert objects.stored(oid) == data and objects.read(oid) == data


def test_the_example_of_docs_store_md_decodes_and_the_encoder_stores_it_canonical(
    objects: Objects,
) -> None:
    payload = np.array([1, 2, 3, 4], np.float32).tobytes()
    canonical_header = encode_header("F32", (4,), 16)
    oid = hashlib.sha256(canonical_header + payload).hexdigest()
    out = io.BytesIO()
    header = parse_header_bytes(oid, canonical_header + payload, 88)
    writer = EncodingWriter(out, canonical_header, header, 4)
    writer.write(payload)
    writer.finish(oid)
    assert out.getvalue() == canonical_header + payload  # rule 4: it does not pay
    fixed = bytes.fromhex("89 74 68 7A 01 01 04 00 00 00 10 00 48 00 00 00 10 00 00 00 00 00 00 00")
    planes = bytes.fromhex(
        "24 00 00 00"
        "00 04 00 00 00 00 00 00 00"
        "00 04 00 00 00 00 00 00 00"
        "00 04 00 00 00 80 00 40 80"
        "00 04 00 00 00 3F 40 40 40"
    )
    example = fixed + bytes.fromhex(oid) + bytes(32) + canonical_header + planes
    assert EncodedHeader.parse(oid, example, len(example)).to_bytes() == example[:160]
    objects.write(oid, example)
    assert objects.read(oid) == canonical_header + payload


def _corrupt(objects: Objects, oid: str, offset: int, value: bytes) -> None:
    stored = bytearray(objects.stored(oid))
    stored[offset : offset + len(value)] = value
    objects.write(oid, bytes(stored))


@pytest.fixture
def encoded(objects: Objects) -> tuple[str, bytes]:
    oid, data = objects.canonical(_weights(6, (3000,)), "F32")
    objects.put(data, "F32")
    return oid, data


@pytest.fixture
def delta(objects: Objects) -> tuple[str, str, bytes]:
    """A stored delta of 3000 F32: its oid, its base's oid and its base's canonical bytes."""
    base, base_data = objects.canonical(_weights(7), "F32")
    objects.put(base_data, "F32")
    oid, data = objects.canonical(_weights(7) * 1.001, "F32")
    objects.put(data, "F32", base=base)
    return oid, base, base_data


@pytest.mark.parametrize(
    "offset, value, message",
    [
        (4, b"\x03", "version 3 is not supported"),
        (5, b"\x07", "unknown encoding kind 7"),
        (6, b"\x03", "plane width 3"),
        (7, b"\x01", "base and depth disagree"),
        (56, b"\x01", "base and depth disagree"),  # a base for a full object
        (8, struct.pack("<I", 100), "block size 100 is out of range"),
        (8, struct.pack("<I", 4098), "block size 4098 is out of range"),  # not 4-wide
        (16, struct.pack("<Q", 12), "header says"),
        (16, struct.pack("<Q", 12001), "payload of 12001 bytes is not 4-wide"),
        # Longer than any canonical header, then longer than what follows in the object.
        (12, struct.pack("<I", 8 + (64 << 10) + 1), "canonical header runs past the end"),
        (12, struct.pack("<I", 60000), "canonical header runs past the end"),
        (24, b"\x00", "encoded object names"),
    ],
)
def test_malformed_encoded_headers_are_named_errors(
    objects: Objects, encoded, offset: int, value: bytes, message: str
) -> None:
    oid, _ = encoded
    _corrupt(objects, oid, offset, value)
    with pytest.raises(ObjectFormatError, match=message) as caught:
        objects.read(oid)
    assert caught.value.oid == oid


def test_a_canonical_header_length_reaching_into_the_payload_is_refused(
    objects: Objects, encoded
) -> None:
    """Header and payload lengths that move bytes from one to the other still add up to
    the canonical object's size: the canonical header's own length must agree."""
    oid, data = encoded
    header_length = parse_header_bytes(oid, data, len(data)).data_offset
    payload_length = len(data) - header_length
    _corrupt(objects, oid, 12, struct.pack("<IQ", header_length + 4, payload_length - 4))
    with pytest.raises(
        ObjectFormatError, match=f"{oid} is corrupt: canonical header length disagrees"
    ):
        objects.read(oid)


def test_an_object_ending_inside_its_encoded_header_is_refused(objects: Objects, encoded) -> None:
    oid, _ = encoded
    objects.write(oid, objects.stored(oid)[:87])
    with pytest.raises(ObjectFormatError, match=f"{oid} is corrupt: encoded object shorter than"):
        objects.open(oid)


def test_an_object_without_room_for_its_blocks_is_refused_when_opened(
    objects: Objects, encoded
) -> None:
    """Every block takes at least its length field and one plane record, 9 bytes: an
    object too short for its blocks is refused before any of them is read."""
    oid, data = encoded  # three blocks
    headers = 88 + parse_header_bytes(oid, data, len(data)).data_offset
    objects.write(oid, objects.stored(oid)[: headers + 3 * 9 - 1])
    with pytest.raises(ObjectFormatError, match=f"{oid} is corrupt: .* shorter than its blocks"):
        objects.open(oid)


def test_parsing_a_canonical_object_as_an_encoded_header_is_refused(objects: Objects) -> None:
    oid, data = objects.canonical(_weights(6, (3000,)), "F32")
    with pytest.raises(ObjectFormatError, match=f"{oid} is corrupt: not an encoded object"):
        EncodedHeader.parse(oid, data, len(data))


def test_a_flipped_payload_byte_fails_the_sha256_at_the_end(objects: Objects, encoded) -> None:
    oid, data = encoded
    stored = objects.stored(oid)
    # A byte of block 0's plane 0 (mantissa noise, stored raw): it decodes, to other bytes.
    plane = 88 + parse_header_bytes(oid, data, len(data)).data_offset + 4
    assert stored[plane] == 0  # mode raw
    position = plane + 5 + 10
    _corrupt(objects, oid, position, bytes([stored[position] ^ 1]))
    with pytest.raises(ObjectFormatError, match="content hashes to"):
        objects.read(oid)


def test_an_object_its_file_holds_only_part_of_is_a_named_error(objects: Objects, encoded) -> None:
    """As a pack entry is when the pack was cut after its index was read: the region the
    index gives runs past the end of the file."""
    oid, _ = encoded
    stored = objects.stored(oid)
    objects.write(oid, stored[:-10])
    fd = os.open(objects.directory / oid, os.O_RDONLY)
    with ObjectReader(StoredObject(oid, fd, 0, len(stored), owns_fd=True)) as reader:
        with pytest.raises(ObjectFormatError, match=f"{oid} is corrupt: stored object ends early"):
            reader.read()


@pytest.mark.parametrize("index", [-1, 3])
def test_a_block_outside_the_object_is_a_named_error(objects: Objects, encoded, index: int) -> None:
    oid, _ = encoded  # blocks 0 to 2
    with objects.open(oid) as stored:
        with pytest.raises(ObjectFormatError, match=f"{oid} is corrupt: no block {index}"):
            stored.decoded_block(index)
        with pytest.raises(ObjectFormatError, match=f"{oid} is corrupt: no block {index}"):
            stored.planes(index, 4, BLOCK)


# A range that ends past the payload but starts inside its last block would loop forever
# without the check (that block gives no bytes beyond the payload); these fail at once.
@pytest.mark.parametrize("offset, size", [(-1, 4), (0, -1), (20000, 4)])
def test_read_payload_refuses_a_range_outside_the_payload(
    objects: Objects, encoded, offset: int, size: int
) -> None:
    encoded_oid, _ = encoded  # 12000 payload bytes
    canonical_oid, canonical = objects.canonical(_weights(9, (3000,)), "F32")
    objects.write(canonical_oid, canonical)
    for oid in (encoded_oid, canonical_oid):
        with objects.open(oid) as stored:
            outside = re.escape(f"payload range {offset}+{size} is outside the object")
            with pytest.raises(ValueError, match=outside):
                stored.read_payload(offset, size)


def _block_0(oid: str, data: bytes) -> int:
    """Where block 0's plane records start in the stored object, after its length field."""
    return 88 + parse_header_bytes(oid, data, len(data)).data_offset + 4


def test_a_malformed_block_is_a_named_error(objects: Objects, encoded) -> None:
    oid, data = encoded
    _corrupt(objects, oid, _block_0(oid, data), b"\x09")  # plane 0's mode
    with pytest.raises(ObjectFormatError, match=f"{oid} is corrupt: block 0: unknown plane mode"):
        objects.read(oid)


def test_a_malformed_block_of_a_delta_s_base_is_named_by_the_base(objects: Objects, delta) -> None:
    oid, base, base_data = delta
    _corrupt(objects, base, _block_0(base, base_data), b"\x09")
    with pytest.raises(ObjectFormatError, match=f"{base} is corrupt: block 0: unknown plane mode"):
        objects.read(oid)


def test_a_truncated_encoded_object_is_a_named_error(objects: Objects, encoded) -> None:
    oid, _ = encoded
    objects.write(oid, objects.stored(oid)[:-10])
    with pytest.raises(ObjectFormatError, match="runs past the end|shorter than its blocks"):
        objects.read(oid)


def test_bytes_after_the_last_block_are_refused(objects: Objects, encoded) -> None:
    oid, _ = encoded
    objects.write(oid, objects.stored(oid) + b"extra")
    with pytest.raises(ObjectFormatError, match="bytes after the last block"):
        objects.read(oid)


def test_bytes_after_an_empty_payloads_headers_are_refused(objects: Objects) -> None:
    """An object of no payload has no blocks: nothing may follow its headers either
    (docs/store.md, "Encoded objects": the blocks, "and nothing after them")."""
    canonical = encode_header("U8", (0,), 0)
    oid = hashlib.sha256(canonical).hexdigest()
    header = EncodedHeader(1, 1, 0, BLOCK_SIZE, canonical, 0, oid, None, 1)
    objects.write(oid, header.to_bytes())
    assert objects.read(oid) == canonical
    objects.write(oid, header.to_bytes() + b"extra")
    with pytest.raises(ObjectFormatError, match="bytes after the last block"):
        objects.read(oid)


def test_a_missing_delta_base_is_a_named_error(objects: Objects, delta) -> None:
    oid, base, _ = delta
    (objects.directory / base).unlink()
    with pytest.raises(DeltaBaseMissingError, match=f"delta base {base} is missing") as caught:
        objects.read(oid)
    assert caught.value.base == base and "git theta fetch" in caught.value.hint


def test_a_delta_naming_itself_as_its_base_is_refused(objects: Objects, delta) -> None:
    oid, _, _ = delta
    _corrupt(objects, oid, 56, bytes.fromhex(oid))
    with pytest.raises(ObjectFormatError, match=f"{oid} is corrupt: is its own delta base"):
        objects.read(oid)


def test_a_base_of_another_payload_length_is_refused(objects: Objects, delta) -> None:
    oid, base, _ = delta
    # The base's id now names an object of 8,000 payload bytes, not 12,000.
    objects.write(base, objects.canonical(_weights(7, (2000,)), "F32")[1])
    with pytest.raises(
        ObjectFormatError, match=f"{oid} is corrupt: base {base} has another payload length"
    ):
        objects.read(oid)


def test_a_delta_is_not_written_against_a_base_of_another_payload_length(
    objects: Objects,
) -> None:
    base = objects.put(objects.canonical(_weights(7, (2000,)), "F32")[1], "F32")
    with pytest.raises(ValueError, match=f"base {base} has 8000 payload bytes, not 12000"):
        objects.put(objects.canonical(_weights(7), "F32")[1], "F32", base=base)


def test_a_base_deeper_than_its_delta_is_refused(objects: Objects) -> None:
    first, first_data = objects.canonical(_weights(8), "F32")
    objects.put(first_data, "F32")
    second, second_data = objects.canonical(_weights(8) * 1.001, "F32")
    objects.put(second_data, "F32", base=first)
    third, third_data = objects.canonical(_weights(8) * 1.002, "F32")
    objects.put(third_data, "F32", base=second)
    _corrupt(objects, second, 7, b"\x05")  # deeper than the third's depth 2
    with pytest.raises(ObjectFormatError, match="has depth 5, not below 2"):
        objects.read(third)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 3 * BLOCK // 4),
    st.sampled_from(["F32", "BF16", "U8", "F64"]),
    st.integers(0, 3),
    st.integers(1, 5000),
)
def test_any_payload_and_chain_round_trips(tmp_path_factory, count, dtype, depth, chunk) -> None:
    objects = Objects(tmp_path_factory.mktemp("objects"))
    itemsize = {"F32": 4, "BF16": 2, "U8": 1, "F64": 8}[dtype]
    rng = np.random.default_rng(count)
    raw = rng.integers(0, 4, count * itemsize, dtype=np.uint8)
    previous = None
    try:
        for _ in range(depth + 1):
            data = encode_header(dtype, (count,), len(raw)) + raw.tobytes()
            oid = hashlib.sha256(data).hexdigest()
            if oid != previous:  # the store never writes an object that is already there
                objects.put(data, dtype, base=previous, chunk=chunk)
            assert objects.read(oid) == data
            previous = oid
            raw = raw ^ (rng.integers(0, 50, raw.shape, dtype=np.uint8) == 0).astype(np.uint8)
    finally:
        objects.close()


def test_payload_blocks_give_the_payload_and_only_to_a_caller_that_verifies_it(
    objects: Objects,
) -> None:
    oid, data = objects.canonical(_weights(5, (7000,)), "F32")
    objects.put(data, "F32")
    unverified = ObjectReader(objects.open(oid), verify=False)
    header_size = unverified.tell()
    assert b"".join(unverified.payload_blocks()) == data[header_size:]
    with pytest.raises(ValueError, match="verify=False"):
        next(ObjectReader(objects.open(oid)).payload_blocks())


def test_headers_longer_than_the_first_read_are_read_whole(objects: Objects) -> None:
    # A zero-size tensor of many wide dimensions has a canonical header of over 512 bytes.
    data = encode_header("F32", (0, *(10**12,) * 40), 0)
    assert len(data) > 512
    oid = hashlib.sha256(data).hexdigest()
    objects.write(oid, data)
    stored = objects.open(oid)
    assert stored.header.data_offset == len(data)
    assert objects.read(oid) == data
    stored.close()


# -- a small object decoded from its stored bytes, read with its neighbours (smudge) -------


@pytest.fixture
def one_block(objects: Objects) -> tuple[str, bytes]:
    """An F32 object stored encoded in one block of one plane (as a small object is)."""
    oid, data = objects.canonical(np.repeat(_weights(8, (64,)), BLOCK // 256), "F32")
    header = parse_header_bytes(oid, data, len(data))
    out = io.BytesIO()
    writer = EncodingWriter(out, data[: header.data_offset], header, 1, block_size=BLOCK)
    writer.write(data[header.data_offset :])
    writer.finish(oid)
    assert not writer.canonical
    objects.write(oid, out.getvalue())
    return oid, data


def _payload_from_stored(objects: Objects, oid: str, stored: bytes | None = None) -> bytes:
    with objects.open(oid) as opened:
        assert opened.whole_in_one_read
        return bytes(opened.payload_from_stored(objects.stored(oid) if stored is None else stored))


def test_payload_from_stored_decodes_one_block_and_canonical_objects(
    objects: Objects, one_block
) -> None:
    oid, data = one_block
    payload = data[parse_header_bytes(oid, data, len(data)).data_offset :]
    assert _payload_from_stored(objects, oid) == payload
    canonical_oid, canonical = objects.canonical(_weights(9, (100,)), "F32")
    objects.write(canonical_oid, canonical)
    assert _payload_from_stored(objects, canonical_oid) == canonical[-400:]


def test_payload_from_stored_refuses_what_a_read_by_block_refuses(
    objects: Objects, one_block
) -> None:
    oid, data = one_block
    block_length_at = 88 + parse_header_bytes(oid, data, len(data)).data_offset
    stored = objects.stored(oid)
    with pytest.raises(ObjectFormatError, match="stored object ends early"):
        _payload_from_stored(objects, oid, stored[:-1])
    (length,) = struct.unpack_from("<I", stored, block_length_at)
    _corrupt(objects, oid, block_length_at, struct.pack("<I", length + 1))
    with pytest.raises(ObjectFormatError, match="block 0 runs past the end"):
        _payload_from_stored(objects, oid)
    objects.write(oid, stored + b"extra")
    with pytest.raises(ObjectFormatError, match="bytes after the last block"):
        _payload_from_stored(objects, oid)
    objects.write(oid, stored)
    _corrupt(objects, oid, block_length_at + 4, b"\x09")  # plane 0's mode
    with pytest.raises(ObjectFormatError, match=f"object {oid} is corrupt: block 0: unknown"):
        _payload_from_stored(objects, oid)


def test_only_one_block_against_no_base_is_decoded_from_stored_bytes(
    objects: Objects, encoded
) -> None:
    oid, _ = encoded  # three blocks
    with objects.open(oid) as opened:
        assert not opened.whole_in_one_read
        with pytest.raises(ValueError, match="one block against no base"):
            opened.payload_from_stored(objects.stored(oid))


@pytest.mark.parametrize(
    "array",
    [
        np.repeat(_weights(10, (64,)), 64),  # compresses: encoded
        np.random.default_rng(11).integers(0, 256, 5000, dtype=np.uint8),  # stored canonical
        # saves less than a tenth: a small object is stored canonical (SMALL_RAW_ABOVE)
        np.random.default_rng(12).integers(0, 150, 16384, dtype=np.uint8),
        np.zeros(0, np.float32),  # empty: canonical
        np.zeros(1 << 18, np.float32),  # a whole block of 1 MiB
    ],
)
def test_encode_whole_stores_what_an_encoding_writer_of_one_plane_stores(
    objects: Objects, array: np.ndarray
) -> None:
    dtype = {np.dtype(np.float32): "F32", np.dtype(np.uint8): "U8"}[array.dtype]
    oid, data = objects.canonical(array, dtype)
    header = parse_header_bytes(oid, data, len(data))
    canonical_header, payload = data[: header.data_offset], data[header.data_offset :]
    out = io.BytesIO()
    writer = EncodingWriter(out, canonical_header, header, 1)
    writer.write(payload)
    writer.finish(oid)
    assert encode_whole(oid, canonical_header, header, bytearray(payload)) == out.getvalue()


def test_encode_whole_takes_one_block_of_the_header_s_length() -> None:
    canonical = encode_header("U8", (10,), 10) + bytes(10)
    header = parse_header_bytes("0" * 64, canonical, len(canonical))
    with pytest.raises(ValueError, match="not 9 bytes"):
        encode_whole("0" * 64, b"", header, bytes(9))
    over_a_block = BLOCK_SIZE + 1
    canonical_header = encode_header("U8", (over_a_block,), over_a_block)
    header = parse_header_bytes("0" * 64, canonical_header, len(canonical_header) + over_a_block)
    with pytest.raises(ValueError, match=f"not {over_a_block} bytes"):
        encode_whole("0" * 64, canonical_header, header, bytes(over_a_block))


@pytest.mark.parametrize("payload_length", [11996, 12004])
def test_a_writer_given_another_payload_length_than_its_header_s_does_not_finish(
    payload_length: int,
) -> None:
    canonical_header = encode_header("F32", (3000,), 12000)
    header = parse_header_bytes("0" * 64, canonical_header, len(canonical_header) + 12000)
    writer = EncodingWriter(io.BytesIO(), canonical_header, header, 4, block_size=BLOCK)
    writer.write(bytes(payload_length))
    with pytest.raises(ValueError, match=f"{payload_length} payload bytes, expected 12000"):
        writer.finish("0" * 64)


class _CutFile(io.BytesIO):
    """A temp file that gives back only its first ``end`` bytes, as one cut short does."""

    def __init__(self, end: int) -> None:
        super().__init__()
        self.end = end

    def read(self, size: int | None = -1) -> bytes:
        left = max(0, self.end - self.tell())
        return super().read(left if size is None or size < 0 else min(size, left))


def test_replaying_a_cut_temp_file_is_an_error_and_not_an_endless_replay() -> None:
    noise = np.random.default_rng(5).integers(0, 256, 3 * BLOCK, dtype=np.uint8)
    data = encode_header("U8", noise.shape, noise.nbytes) + noise.tobytes()
    header = parse_header_bytes("0" * 64, data, len(data))
    out = _CutFile(header.data_offset + BLOCK)  # the second block's bytes are gone
    writer = EncodingWriter(out, data[: header.data_offset], header, 1, block_size=BLOCK)
    writer.write(noise[: 2 * BLOCK])  # the input ends after two of its three blocks
    with pytest.raises(ValueError, match="the temp file ends early"):
        # Bounded: without the check, a cut file replays empty chunks forever.
        for _chunk in itertools.islice(writer.replay(), 10):
            pass
    assert writer.canonical  # noise: the replay read the canonical form


def test_replaying_a_cut_encoded_temp_file_is_the_same_named_error() -> None:
    # Zeros compress, so the writer keeps the encoded form. Wherever the temp file
    # is cut (in a block's length or in its frame), the replay says so by name.
    zeros = np.zeros(3 * BLOCK, dtype=np.uint8)
    data = encode_header("U8", zeros.shape, zeros.nbytes) + zeros.tobytes()
    header = parse_header_bytes("0" * 64, data, len(data))

    def writer_of_two_blocks() -> tuple[_CutFile, EncodingWriter]:
        out = _CutFile(end=1 << 30)
        writer = EncodingWriter(out, data[: header.data_offset], header, 1, block_size=BLOCK)
        writer.write(zeros[: 2 * BLOCK])
        return out, writer

    out, writer = writer_of_two_blocks()
    assert b"".join(writer.replay()) == zeros[: 2 * BLOCK].tobytes()
    assert writer.canonical is False
    for end in range(len(out.getvalue())):
        out, writer = writer_of_two_blocks()
        chunks = writer.replay()
        out.end = end
        with pytest.raises(ValueError, match="the temp file ends early"):
            list(chunks)
