"""Block codecs of stored objects: byte planes, XOR deltas and zstd.

Specified in ``docs/store.md`` ("Encoded objects"). A payload is cut into
blocks; each block is split into ``width`` byte planes (plane ``k`` holds byte
``k`` of every element), and each plane is stored one of four ways::

    mode 0  raw        the plane's bytes as they are
    mode 1  zstd       one zstd frame of the plane
    mode 2  xor-zstd   one zstd frame of (plane XOR the base's plane)
    mode 3  same       equal to the base's plane; no data

Splitting puts the sign and exponent bytes of floats together, where zstd
finds their redundancy; the low mantissa bytes are noise and stay raw. XOR
with the previous version of the same tensor turns the bits that training did
not change into zeros.

This module is pure: bytes and numpy arrays in, bytes and arrays out. Files,
objects and chains are ``encoded.py``'s business. numpy and zstandard are
imported on first use: the filter answers git's handshake without them, and
a one-plane block without a base (a small object) never needs numpy.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from ..errors import ThetaError

if TYPE_CHECKING:
    import numpy as np
    import zstandard

__all__ = [
    "MODE_RAW",
    "MODE_ZSTD",
    "MODE_XOR_ZSTD",
    "MODE_SAME",
    "WIDTHS",
    "RAW_ABOVE",
    "SMALL_RAW_ABOVE",
    "BlockFormatError",
    "split_planes",
    "join_planes",
    "encode_block",
    "decode_block",
    "decode_records",
    "plane_records",
    "decode_block_bytes",
    "block_uses_base",
    "tune_allocator",
    "preload_numpy",
]

MODE_RAW = 0
MODE_ZSTD = 1
MODE_XOR_ZSTD = 2
MODE_SAME = 3
WIDTHS = (1, 2, 4, 8)
# A compressed plane larger than this share of the plane is stored raw: its
# decompression would cost time for almost no space.
RAW_ABOVE = 0.97
# A small object (under 1 MiB, one plane) is decoded by a call of its own, thousands
# of them for some files: its encoding must save a tenth (docs/store.md, rule 4).
SMALL_RAW_ABOVE = 0.90
ZSTD_LEVEL = 1
# Byte planes of floats hold few repeated strings: zstd's gain there is entropy
# coding. A tiny match table and long minimum match skip most of the match
# search, which at plain level 1 costs two thirds of the time and finds matches
# too short to pay. Measured on fp32 weights, bf16 weights and XOR deltas of
# training steps: the exponent plane compresses to 0.34 instead of 0.39 of its
# size, 3.5x as fast (330 -> 1,150 MB/s on one core), and every other plane as
# well as or better than at level 1. Decoders are unaffected: these are
# ordinary zstd frames.
_MATCH_TABLE_LOG = 6
_MIN_MATCH = 7
_WINDOW_LOG = 17  # a plane of a 1 MiB block is at most 1 MiB; matches are short anyway
# Planes are first tried on a sample of this many bytes; a sample that does
# not compress marks the plane as noise (the low mantissa bytes of floats),
# which is then stored raw without paying for compressing all of it.
_SAMPLE = 16 << 10
# A small object is first tried on a sample of this many bytes, when it holds more
# than two: one whose sample does not compress to _SMALL_SAMPLE_ABOVE of it (a little
# above SMALL_RAW_ABOVE: zstd's frame and tables weigh more on a sample) is stored
# as it is. Compressing 6,000 tensors of 16 KB of noise whole held the clean's
# thread back by about 0.3 s.
_SMALL_SAMPLE = 4 << 10
_SMALL_SAMPLE_ABOVE = 0.92
_PLANE_RECORD = struct.Struct("<BI")  # mode, stored length
# Widths whose planes are joined with integer shifts; for 8, numpy's strided copy is faster.
_JOINED_BY_SHIFTS = (2, 4)

# The base's planes of a block, given which of them must hold data.
BasePlanes = Callable[[frozenset[int]], "np.ndarray"]


class BlockFormatError(ThetaError):
    """A block's bytes do not follow docs/store.md; the caller names the object."""


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    """One compressor per thread: zstandard's objects are not thread-safe."""
    compressor = getattr(_local, "compressor", None)
    if compressor is None:
        import zstandard

        parameters = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL,
            hash_log=_MATCH_TABLE_LOG,
            min_match=_MIN_MATCH,
            search_log=1,
            window_log=_WINDOW_LOG,
            write_content_size=1,
            write_checksum=0,
        )
        compressor = _local.compressor = zstandard.ZstdCompressor(compression_params=parameters)
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:
        import zstandard

        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor


# glibc's malloc gives each buffer above its (adaptive) threshold fresh pages from
# mmap and returns them when freed: every block's planes, frames and joined bytes
# were then page-faulted anew, a fifth of a chain's decoding time. Buffers up to
# twice a block come from the heap instead, which keeps up to 16 MiB free for reuse.
# The setting is process-wide, so only this package's own processes (the filter and
# the command line) make it; a training process using the Python API keeps its own.
_MMAP_THRESHOLD = 2 << 20
_TRIM_THRESHOLD = 16 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers in glibc
_allocator_tuned = False


def tune_allocator() -> None:
    """Keep block-sized buffers on the heap (glibc only; elsewhere nothing changes)."""
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


_numpy_import: threading.Thread | None = None


def preload_numpy() -> None:
    """Start importing numpy on a thread of its own, and return at once.

    Importing it takes about 0.1 s of CPU, the price of a third of a 300 MB
    add. Imported by the first block that needs it, the import stalls every
    worker behind it; started when a large file begins, it runs while the
    file's head is read, the staged manifest is looked up and the hooks are
    checked. A function that needs numpy still imports it: if this import is
    still running, Python's import lock makes it wait for it, and if it
    failed, that import raises the error.
    """
    global _numpy_import
    if _numpy_import is not None:
        return
    import sys

    if "numpy" in sys.modules:
        return
    _numpy_import = threading.Thread(target=_import_numpy, name="theta-numpy-import", daemon=True)
    _numpy_import.start()


def _import_numpy() -> None:
    try:
        import numpy  # noqa: F401
    except BaseException:  # noqa: S110 - the import that needs numpy raises it again
        pass


def split_planes(block: bytes | bytearray | memoryview, width: int) -> np.ndarray:
    """A ``(width, len(block) // width)`` array: row ``k`` is byte ``k`` of every element."""
    import numpy as np

    data = np.frombuffer(block, dtype=np.uint8)
    if width == 1:
        return data.reshape(1, -1)
    if width in _JOINED_BY_SHIFTS:
        # Each element as a little-endian word, shifted right by 8k bits and cut to
        # its low byte: whole, contiguous array operations, as join_planes does. A
        # 1 MiB block of F32 took 0.37 ms as one strided copy per plane, 0.23 ms so;
        # of BF16, 0.35 -> 0.13 ms.
        words = data.view(f"<u{width}")
        planes = np.empty((width, words.shape[0]), dtype=np.uint8)
        planes[0] = words  # the assignment keeps each word's low byte
        shifted = np.empty_like(words)
        for k in range(1, width):
            np.right_shift(words, 8 * k, out=shifted)
            planes[k] = shifted
        return planes
    elements = data.reshape(-1, width)
    planes = np.empty((width, elements.shape[0]), dtype=np.uint8)
    # One strided copy per plane; numpy's copy of the whole transposed array
    # is several times slower for so narrow an inner dimension.
    for k in range(width):
        planes[k] = elements[:, k]
    return planes


def join_planes(planes: np.ndarray, out: memoryview | None = None) -> memoryview:
    """The block bytes again: the inverse of :func:`split_planes`, written into ``out``."""
    import numpy as np

    width, count = planes.shape
    target = (
        np.empty(width * count, dtype=np.uint8) if out is None else np.frombuffer(out, np.uint8)
    )
    if width == 1:
        target[:count] = planes[0]
    elif width in _JOINED_BY_SHIFTS:
        # Each element as a little-endian integer, plane k shifted to byte k: whole,
        # contiguous array operations. numpy's strided copy of one byte per element
        # is the slow part of decoding otherwise (a 1 MiB block of BF16: 240-470 us
        # strided, 70 us so; of F32: 240 -> 170 us).
        # Horner's scheme from the top plane down, each plane widened by a plain copy
        # first: a shift whose input numpy must cast on the fly is the slower loop
        # (a 1 MiB block of F32: 0.30 -> 0.24 ms).
        words = target[: width * count].view(f"<u{width}")
        np.copyto(words, planes[width - 1])
        widened = np.empty_like(words)
        for k in range(width - 2, -1, -1):
            np.left_shift(words, 8, out=words)
            np.copyto(widened, planes[k])
            np.bitwise_or(words, widened, out=words)
    else:
        elements = target[: width * count].reshape(count, width)
        for k in range(width):
            elements[:, k] = planes[k]
    # numpy's stubs give ndarray the buffer protocol only on Python 3.12 and later.
    return memoryview(target)[: width * count]  # type: ignore[arg-type]


def _compressed_or_none(
    plane: np.ndarray | bytes | bytearray | memoryview, small: bool = False
) -> bytes | None:
    """zstd of ``plane`` if that saves enough to be worth decompressing, else None;
    ``small``: the plane is a small object's only one."""
    # numpy's stubs give ndarray the buffer protocol only on Python 3.12 and later.
    view = memoryview(plane).cast("B")  # type: ignore[arg-type]
    size = len(view)
    compressor = _compressor()
    raw_above = SMALL_RAW_ABOVE if small else RAW_ABOVE
    if size > 2 * _SAMPLE:
        sample = compressor.compress(view[:_SAMPLE])
        if len(sample) > raw_above * _SAMPLE:
            return None
    elif small and size > 2 * _SMALL_SAMPLE:
        sample = compressor.compress(view[:_SMALL_SAMPLE])
        if len(sample) > _SMALL_SAMPLE_ABOVE * _SMALL_SAMPLE:
            return None
    compressed = compressor.compress(view)
    return compressed if len(compressed) <= raw_above * size else None


def encode_block(
    block: bytes | bytearray | memoryview,
    width: int,
    base: np.ndarray | None = None,
    *,
    small: bool = False,
) -> bytes:
    """The stored form of one block; ``base`` is the base's planes of the same block, if any.

    ``len(block)`` must be a multiple of ``width``. Each plane gets the
    smallest of the modes tried: ``same`` or ``xor-zstd`` against the base,
    ``zstd``, or ``raw``. A plane whose XOR does not compress is stored from
    its own bytes, so decoding it needs no base. ``small``: the block is a
    small object's whole payload, in one plane, which must compress further.
    """
    if width not in WIDTHS or len(block) % width:
        raise ValueError(f"a block of {len(block)} bytes cannot have {width} planes")
    if small and (width != 1 or base is not None):
        raise ValueError("a small object is one plane against no base")
    if width == 1 and base is None:  # one plane, nothing to XOR: no numpy needed
        compressed = _compressed_or_none(block, small)
        if compressed is None:
            return b"".join((_PLANE_RECORD.pack(MODE_RAW, len(block)), block))
        return _PLANE_RECORD.pack(MODE_ZSTD, len(compressed)) + compressed
    import numpy as np

    planes = split_planes(block, width)
    if base is not None and base.shape != planes.shape:
        raise ValueError(f"base planes {base.shape} do not match the block's {planes.shape}")
    parts: list[bytes | np.ndarray] = []
    for k in range(width):
        plane = planes[k]
        mode, data = MODE_RAW, b""
        if base is not None:
            delta = np.bitwise_xor(plane, base[k])
            if not delta.any():
                mode = MODE_SAME
            elif (compressed := _compressed_or_none(delta)) is not None:
                mode, data = MODE_XOR_ZSTD, compressed
        if mode == MODE_RAW:
            if (compressed := _compressed_or_none(plane)) is not None:
                mode, data = MODE_ZSTD, compressed
            else:
                data = plane  # a contiguous row: joined below without a copy of its own
        parts.append(_PLANE_RECORD.pack(mode, len(data)))
        parts.append(data)
    # numpy's stubs give ndarray the buffer protocol only on Python 3.12 and later.
    return b"".join(parts)  # type: ignore[arg-type]


# Reads ``size`` stored bytes at ``offset`` of a block.
ReadAt = Callable[[int, int], "bytes | memoryview"]


def plane_records(
    read: ReadAt,
    block_length: int,
    width: int,
    plane_size: int,
    wanted: Collection[int] | None = None,
) -> list[tuple[int, bytes | memoryview | None]]:
    """(mode, stored bytes) of each plane of a block of ``block_length`` stored bytes,
    checked against the block's bounds. Only the planes in ``wanted`` (default: all)
    have their bytes read; the others' are None. So a delta's base gives up only the
    planes the delta refers to.
    """
    records: list[tuple[int, bytes | memoryview | None]] = []
    position = 0
    for k in range(width):
        if position + _PLANE_RECORD.size > block_length:
            raise BlockFormatError("block ends inside a plane record")
        mode, length = _PLANE_RECORD.unpack(read(position, _PLANE_RECORD.size))
        position += _PLANE_RECORD.size
        if mode > MODE_SAME:
            raise BlockFormatError(f"unknown plane mode {mode}")
        if position + length > block_length:
            raise BlockFormatError("plane data runs past the end of the block")
        if mode == MODE_RAW and length != plane_size:
            raise BlockFormatError(f"raw plane of {length} bytes, expected {plane_size}")
        if mode == MODE_SAME and length:
            raise BlockFormatError("a 'same' plane carries data")
        wanted_here = wanted is None or k in wanted
        records.append((mode, read(position, length) if wanted_here else None))
        position += length
    if position != block_length:
        raise BlockFormatError(f"{block_length - position} bytes after the last plane")
    return records


def _plane_records(data: memoryview, width: int, plane_size: int):
    """:func:`plane_records` of a block held in memory."""
    return plane_records(
        lambda offset, size: data[offset : offset + size], len(data), width, plane_size
    )


def block_uses_base(data: bytes | bytearray | memoryview, width: int, size: int) -> bool:
    """Whether decoding this block needs the base's planes."""
    records = _plane_records(memoryview(data), width, size // width)
    return any(mode in (MODE_XOR_ZSTD, MODE_SAME) for mode, _ in records)


def _decompressed(frame: bytes | memoryview, size: int) -> bytes:
    """The plane a zstd frame holds, checked to be exactly ``size`` bytes."""
    import zstandard

    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise BlockFormatError(f"not a zstd frame: {exc}") from None
    if params.content_size != size:
        raise BlockFormatError(f"zstd frame declares {params.content_size} bytes, expected {size}")
    try:
        # max_output_size bounds the work a hostile frame can cause.
        plain = _decompressor().decompress(frame, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise BlockFormatError(f"zstd frame does not decode: {exc}") from None
    # zstd refuses a frame whose content is not the size its header declares, so the
    # plane is ``size`` bytes (test_codec pins this).
    return plain


def decode_block(
    data: bytes | bytearray | memoryview,
    width: int,
    size: int,
    base: BasePlanes | None = None,
) -> np.ndarray:
    """The planes of a block of ``size`` payload bytes stored as ``data``.

    ``base`` returns the base's planes of the same block (see
    :func:`decode_records`). Raises :class:`BlockFormatError` for anything
    that does not follow the format.
    """
    if width not in WIDTHS or size % width:
        raise BlockFormatError(f"a block of {size} bytes cannot have {width} planes")
    plane_size = size // width
    return decode_records(_plane_records(memoryview(data), width, plane_size), plane_size, base)


def decode_records(
    records: list[tuple[int, bytes | memoryview | None]],
    plane_size: int,
    base: BasePlanes | None = None,
    wanted: Collection[int] | None = None,
) -> np.ndarray:
    """The planes of a block from its :func:`plane_records`, ``plane_size`` bytes each.

    Only the planes in ``wanted`` (default: all; their bytes must have been
    read) are decoded; the other rows are left undefined. ``base`` returns
    the base's planes of the same block, given the set of planes it must
    fill: those of ``wanted`` stored against the base. It is called only if
    there are any, and at most once. So a chain of deltas decodes, at each
    depth, only the planes a later version refers to: the noisy low bytes of
    floats, stored raw at every depth, are read once, from the top.
    """
    import numpy as np

    width = len(records)
    chosen = range(width) if wanted is None else sorted(wanted)
    from_base = frozenset(k for k in chosen if records[k][0] in (MODE_XOR_ZSTD, MODE_SAME))
    base_planes: np.ndarray | None = None
    if from_base:
        if base is None:
            raise BlockFormatError("a plane refers to a base, but the object has none")
        base_planes = base(from_base)
    planes = np.empty((width, plane_size), dtype=np.uint8)
    if base_planes is not None and base_planes.shape != planes.shape:
        raise BlockFormatError(f"base planes {base_planes.shape} do not match {planes.shape}")
    for k in chosen:
        mode, stored = records[k]
        assert stored is not None
        if mode == MODE_RAW:
            planes[k] = np.frombuffer(stored, dtype=np.uint8)
        elif mode == MODE_ZSTD:
            planes[k] = np.frombuffer(_decompressed(stored, plane_size), dtype=np.uint8)
        elif mode == MODE_SAME:
            assert base_planes is not None
            planes[k] = base_planes[k]
        else:
            assert base_planes is not None
            delta = np.frombuffer(_decompressed(stored, plane_size), dtype=np.uint8)
            np.bitwise_xor(delta, base_planes[k], out=planes[k])
    return planes


def decode_block_bytes(
    data: bytes | bytearray | memoryview,
    width: int,
    size: int,
    base: BasePlanes | None = None,
    out: bytearray | None = None,
) -> bytes | bytearray | memoryview:
    """The payload bytes of a block: :func:`decode_block`, joined; without numpy
    for a one-plane block that needs no base. Planes are joined into ``out`` when
    given (``size`` bytes), and ``out`` is returned.
    """
    if width == 1:
        ((mode, stored),) = _plane_records(memoryview(data), 1, size)
        if mode == MODE_RAW:
            return stored
        if mode == MODE_ZSTD:
            return _decompressed(stored, size)
    planes = decode_block(data, width, size, base)
    if out is None:
        return join_planes(planes)
    join_planes(planes, memoryview(out))
    return out
