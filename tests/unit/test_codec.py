"""Block codecs (docs/store.md, "Encoded objects"): byte planes, XOR deltas, zstd."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from git_theta_filter.store import codec
from git_theta_filter.store.codec import (
    MODE_RAW,
    MODE_SAME,
    MODE_XOR_ZSTD,
    MODE_ZSTD,
    BlockFormatError,
    block_uses_base,
    decode_block,
    decode_records,
    encode_block,
    join_planes,
    plane_records,
    split_planes,
)


@st.composite
def blocks(draw, with_base: bool = False):
    width = draw(st.sampled_from([1, 2, 4, 8]))
    count = draw(st.integers(0, 300))
    data = draw(st.binary(min_size=width * count, max_size=width * count))
    if not with_base:
        return width, data, None
    # Bases that share some bytes with the block, as a previous version does.
    flips = draw(st.lists(st.integers(0, max(0, len(data) - 1)), max_size=20))
    base = bytearray(data)
    for position in flips:
        if base:
            base[position] ^= 0x5A
    return width, data, bytes(base)


@settings(max_examples=200, deadline=None)
@given(blocks())
def test_split_planes_then_join_is_identity(case) -> None:
    width, data, _ = case
    planes = split_planes(data, width)
    assert planes.shape == (width, len(data) // width)
    if data:
        assert planes[0, 0] == data[0]
    assert bytes(join_planes(planes)) == data


@settings(max_examples=200, deadline=None)
@given(blocks())
def test_split_planes_row_k_holds_byte_k_of_every_element(case) -> None:
    """Whatever the arithmetic (integer shifts for widths 2 and 4), the planes are the
    format's: the stored bytes of every encoder version depend on it."""
    width, data, _ = case
    planes = split_planes(data, width)
    for k in range(width):
        assert bytes(planes[k]) == data[k::width]


@settings(max_examples=200, deadline=None)
@given(blocks())
def test_encode_block_round_trips_without_base(case) -> None:
    width, data, _ = case
    stored = encode_block(data, width)
    assert not block_uses_base(stored, width, len(data))
    assert bytes(join_planes(decode_block(stored, width, len(data)))) == data


@settings(max_examples=200, deadline=None)
@given(blocks(with_base=True))
def test_encode_block_round_trips_against_a_base(case) -> None:
    width, data, base = case
    base_planes = split_planes(base, width)
    stored = encode_block(data, width, base_planes)
    decoded = decode_block(stored, width, len(data), lambda needed: base_planes)
    assert bytes(join_planes(decoded)) == data


def test_xor_of_float_versions_is_smaller_than_the_version_itself() -> None:
    rng = np.random.default_rng(0)
    old = (rng.standard_normal(1 << 16) * 0.02).astype(np.float32)
    new = old + (rng.standard_normal(old.shape) * 1e-4).astype(np.float32)
    full = encode_block(new.tobytes(), 4)
    delta = encode_block(new.tobytes(), 4, split_planes(old.tobytes(), 4))
    assert len(delta) < len(full) < new.nbytes
    assert delta[0] == MODE_RAW  # plane 0, the lowest mantissa byte, is noise either way


def test_planes_equal_to_the_base_are_stored_as_same_and_noise_raw() -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    stored = encode_block(data, 2, split_planes(data, 2))
    assert stored == bytes([MODE_SAME, 0, 0, 0, 0]) * 2
    stored = encode_block(data, 1)
    assert stored[0] == MODE_RAW and len(stored) == 5 + len(data)


def test_a_compressible_plane_is_zstd_and_a_changed_one_xor_zstd() -> None:
    data = bytes(range(256)) * 64
    base = bytearray(data)
    base[100] ^= 1
    assert encode_block(data, 1)[0] == MODE_ZSTD
    assert encode_block(data, 1, split_planes(bytes(base), 1))[0] == MODE_XOR_ZSTD


def _record(mode: int, data: bytes) -> bytes:
    return bytes([mode]) + len(data).to_bytes(4, "little") + data


@pytest.mark.parametrize(
    "stored, message",
    [
        (_record(MODE_RAW, b"abc"), "raw plane of 3 bytes"),
        (_record(9, b"abcd"), "unknown plane mode 9"),
        (_record(MODE_RAW, b"abcd") + b"x", "1 bytes after the last plane"),
        (_record(MODE_RAW, b"abcd")[:7], "runs past the end"),
        (b"\x00\x04", "ends inside a plane record"),
        (_record(MODE_ZSTD, b"not zstd"), "not a zstd frame"),
        (_record(MODE_ZSTD, zstandard.ZstdCompressor().compress(b"abcde")), "declares 5 bytes"),
        (
            _record(MODE_ZSTD, zstandard.ZstdCompressor().compress(b"abcd") + b"!"),
            "does not decode",
        ),
        (_record(MODE_SAME, b""), "refers to a base"),
        (_record(MODE_SAME, b"abcd"), "carries data"),
    ],
)
def test_decode_block_refuses_malformed_blocks(stored: bytes, message: str) -> None:
    with pytest.raises(BlockFormatError, match=message):
        decode_block(stored, 1, 4)


def test_a_frame_without_a_content_size_is_refused() -> None:
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"abcd")
    with pytest.raises(BlockFormatError, match="declares 18446744073709551615 bytes, expected 4"):
        decode_block(_record(MODE_ZSTD, frame), 1, 4)


def _declaring(frame: bytes, declared: int) -> bytes:
    """``frame`` with the content size in its header replaced by ``declared``."""
    # A frame of under 256 bytes is one segment whose size is the byte after the
    # frame header descriptor (0x20: single segment, one-byte size).
    assert frame[4] == 0x20
    return frame[:5] + bytes([declared]) + frame[6:]


@pytest.mark.parametrize(
    "content, declared",
    [
        (b"abc", 4),  # shorter than declared, in a raw zstd block
        (b"abcde", 4),  # longer
        (b"ab" * 60, 119),  # longer, in a compressed zstd block
        (b"ab" * 60, 121),  # shorter
    ],
)
def test_a_frame_whose_content_is_not_the_size_it_declares_is_refused(
    content: bytes, declared: int
) -> None:
    """The codec checks a frame's declared size and relies on zstd to refuse content
    of another size: a plane of the wrong length must never reach the planes."""
    frame = _declaring(zstandard.ZstdCompressor().compress(content), declared)
    assert zstandard.get_frame_parameters(frame).content_size == declared
    with pytest.raises(BlockFormatError, match="zstd frame does not decode"):
        decode_block(_record(MODE_ZSTD, frame), 1, declared)


@pytest.mark.parametrize("length, width", [(6, 3), (6, 4), (16, 16)])
def test_encode_block_refuses_a_width_that_does_not_split_the_block(
    length: int, width: int
) -> None:
    with pytest.raises(ValueError, match=f"a block of {length} bytes cannot have {width} planes"):
        encode_block(bytes(length), width)


@pytest.mark.parametrize("size, width", [(6, 3), (6, 4), (16, 16)])
def test_decode_block_refuses_a_width_that_does_not_split_the_block(size: int, width: int) -> None:
    stored = encode_block(bytes(size), 1)
    with pytest.raises(
        BlockFormatError, match=f"a block of {size} bytes cannot have {width} planes"
    ):
        decode_block(stored, width, size)


def test_encode_block_refuses_base_planes_of_another_shape() -> None:
    with pytest.raises(ValueError, match=r"base planes \(2, 3\) do not match the block's \(2, 4\)"):
        encode_block(bytes(8), 2, np.zeros((2, 3), np.uint8))


def test_decode_block_refuses_base_planes_of_another_shape() -> None:
    data = bytes(range(8))
    stored = encode_block(data, 2, split_planes(data, 2))  # both planes 'same' as the base
    with pytest.raises(BlockFormatError, match=r"base planes \(2, 3\) do not match \(2, 4\)"):
        decode_block(stored, 2, 8, lambda needed: np.zeros((2, 3), np.uint8))


def test_a_malformed_plane_is_refused_even_when_only_another_is_wanted() -> None:
    stored = _record(9, b"ab") + _record(MODE_RAW, b"cd")
    with pytest.raises(BlockFormatError, match="unknown plane mode 9"):
        plane_records(lambda offset, size: stored[offset : offset + size], len(stored), 2, 2, {1})


def test_only_wanted_planes_are_read_and_decoded_and_the_base_is_asked_for_those() -> None:
    base = np.arange(4096, dtype=np.uint8).tobytes()
    block = bytes(np.frombuffer(base, np.uint8) ^ np.tile(np.array([0, 0, 1, 7], np.uint8), 1024))
    stored = encode_block(block, 4, split_planes(base, 4))
    reads: list[tuple[int, int]] = []

    def read(offset: int, size: int) -> bytes:
        reads.append((offset, size))
        return stored[offset : offset + size]

    records = plane_records(read, len(stored), 4, 1024, {3})
    assert [data is None for _mode, data in records] == [True, True, True, False]
    assert max(size for _offset, size in reads) == len(records[3][1])  # no other plane's bytes
    asked: list[frozenset[int]] = []

    def base_planes(needed: frozenset[int]) -> np.ndarray:
        asked.append(needed)
        return split_planes(base, 4)

    planes = decode_records(records, 1024, base_planes, {3})
    assert asked == [frozenset({3})]
    assert bytes(planes[3]) == bytes(split_planes(block, 4)[3])


def test_encoding_and_decoding_leave_the_process_allocator_alone():
    """malloc's thresholds are process-wide: a training process that uses the Python API
    keeps its own; only the filter and the command line tune them (tune_allocator)."""
    script = (
        "from git_theta_filter.store import codec\n"
        "block = bytes(range(256)) * 4096\n"
        "stored = codec.encode_block(block, 4)\n"
        "assert bytes(codec.decode_block_bytes(stored, 4, len(block))) == block\n"
        "print(codec._allocator_tuned)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    assert result.stdout.decode().strip() == "False"


class _CountingCompressor:
    """A compressor that records the size of every input it is given."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.sizes: list[int] = []

    def compress(self, data) -> bytes:
        self.sizes.append(len(memoryview(data).cast("B")))
        return self.inner.compress(data)


def test_a_small_object_of_noise_is_judged_on_a_sample_and_not_compressed_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small object is first tried on a 4 KiB sample; noise stops there (stored raw,
    so canonical), anything the sample finds compressible is compressed whole."""
    counting = _CountingCompressor(codec._compressor())
    monkeypatch.setattr(codec, "_compressor", lambda: counting)
    noise = np.random.default_rng(21).standard_normal(4096).astype(np.float32).tobytes()
    stored = encode_block(noise, 1, small=True)
    assert counting.sizes == [4096]
    assert stored[0] == MODE_RAW
    counting.sizes.clear()
    ramp = np.repeat(np.arange(64, dtype=np.float32), 64).tobytes()
    stored = encode_block(ramp, 1, small=True)
    assert counting.sizes == [4096, len(ramp)]
    assert stored[0] == MODE_ZSTD


def test_a_small_object_is_one_plane_against_no_base() -> None:
    block = bytes(4096)
    with pytest.raises(ValueError, match="one plane against no base"):
        encode_block(block, 4, small=True)
    with pytest.raises(ValueError, match="one plane against no base"):
        encode_block(block, 1, np.zeros((1, 4096), np.uint8), small=True)
