"""The object format: one tensor in a canonical safetensors file.

Specified in ``docs/store.md``. The header is a pure function of dtype, shape
and payload length, so equal payloads of equal type and shape always give the
same bytes and therefore the same object id::

    <u64 little-endian N>
    {"tensor":{"dtype":"F32","shape":[16,8],"data_offsets":[0,512]}}<spaces to a multiple of 8>
    <payload>

Reading checks every field against the file size before any payload is used;
this parser is the security boundary for objects that came from elsewhere.
"""

from __future__ import annotations

import functools
import json
import math
import re
import struct
from dataclasses import dataclass
from typing import BinaryIO

from ..dtypes import DTYPES, dtype_by_name
from ..errors import ThetaError

__all__ = [
    "TENSOR_KEY",
    "MAX_OBJECT_HEADER",
    "ObjectFormatError",
    "ObjectHeader",
    "encode_header",
    "read_header",
    "object_type_for",
    "is_valid_oid",
]

TENSOR_KEY = "tensor"
# An object id: the sha256 of the object's bytes, as 64 lowercase hex digits.
_OID_RE = re.compile(r"[0-9a-f]{64}\Z")
# Our headers are a few hundred bytes; anything larger was not written by us.
MAX_OBJECT_HEADER = 64 << 10
# As many as a manifest's shapes may have (manifest.MAX_DIMS; store does not import it).
MAX_OBJECT_DIMS = 64


def is_valid_oid(text: str) -> bool:
    """Whether ``text`` has the form of an object id (and of any sha256 this project writes)."""
    return bool(_OID_RE.match(text))


class ObjectFormatError(ThetaError):
    """An object file that is not a canonical single-tensor safetensors file."""

    def __init__(self, oid: str, reason: str) -> None:
        super().__init__(
            f"object {oid} is corrupt: {reason}",
            hint="run `git theta fsck`, then `git theta fetch` to restore it",
        )
        self.oid = oid
        self.reason = reason


@dataclass(frozen=True)
class ObjectHeader:
    dtype: str
    shape: tuple[int, ...]
    data_offset: int
    nbytes: int


def object_type_for(dtype: str, shape: tuple[int, ...], nbytes: int) -> tuple[str, tuple[int, ...]]:
    """The dtype and shape written into the object for a payload of ``nbytes`` read as
    ``dtype`` ``shape``: those, or U8 bytes where safetensors has no such dtype."""
    if dtype_by_name(dtype).in_safetensors:
        return dtype, shape
    return "U8", (nbytes,)


def encode_header(dtype: str, shape: tuple[int, ...], nbytes: int) -> bytes:
    """The canonical header bytes (length prefix included) for a payload of ``nbytes``."""
    return _encode_header(dtype, tuple(shape), nbytes)


# Remembered by (dtype, shape, length): a clean of thousands of small tensors makes the
# same few headers over and over (the JSON encoding was 3-4% of its main thread).
@functools.lru_cache(maxsize=1024)
def _encode_header(dtype: str, shape: tuple[int, ...], nbytes: int) -> bytes:
    spec = dtype_by_name(dtype)
    if not spec.in_safetensors:
        raise ValueError(f"{dtype} cannot be an object dtype; store it as U8")
    if math.prod(shape) * spec.itemsize != nbytes:
        raise ValueError(f"{dtype}{list(shape)} does not occupy {nbytes} bytes")
    body = json.dumps(
        {TENSOR_KEY: {"dtype": dtype, "shape": list(shape), "data_offsets": [0, nbytes]}},
        separators=(",", ":"),
    ).encode("ascii")
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body


class _LongInteger(ValueError):
    pass


def _bounded_int(digits: str) -> int:
    """Sizes and offsets fit in 64 bits: 20 digits. Converting n digits costs n**2, and
    Python's own limit may be off (PYTHONINTMAXSTRDIGITS=0)."""
    if len(digits.lstrip("-")) > 20:
        raise _LongInteger(digits[:20])
    return int(digits)


# Headers already validated, by their exact bytes: a checkout of thousands of small
# tensors opens objects whose headers are mostly the same few, and the JSON parse
# was most of the cost of opening one. Only short headers (all of ours but those
# of tensors with dozens of dimensions) are kept, and the whole is cleared when
# full, so it stays under a megabyte.
_VALID_HEADERS: dict[bytes, ObjectHeader] = {}
_MAX_VALID_HEADERS = 1024
_MAX_REMEMBERED_HEADER = 1024


def parse_header_bytes(oid: str, prefix: bytes, file_size: int) -> ObjectHeader:
    """Validate a header given the first bytes of the object and its total size."""
    if len(prefix) < 8:
        raise ObjectFormatError(oid, "shorter than a safetensors header")
    (length,) = struct.unpack_from("<Q", prefix)
    if length > MAX_OBJECT_HEADER:
        raise ObjectFormatError(
            oid, f"header of {length} bytes is over the {MAX_OBJECT_HEADER}-byte limit"
        )
    if len(prefix) < 8 + length:
        raise ObjectFormatError(oid, "header runs past the end of the file")
    key = bytes(prefix[: 8 + length])
    header = _VALID_HEADERS.get(key)
    if header is None:
        header = _parse_header_json(oid, key, length)
        if length <= _MAX_REMEMBERED_HEADER:
            if len(_VALID_HEADERS) >= _MAX_VALID_HEADERS:
                _VALID_HEADERS.clear()
            _VALID_HEADERS[key] = header
    if 8 + length + header.nbytes != file_size:
        raise ObjectFormatError(
            oid, f"file is {file_size} bytes, header says {8 + length + header.nbytes}"
        )
    return header


def _parse_header_json(oid: str, prefix: bytes, length: int) -> ObjectHeader:
    """The header whose ``length`` bytes of JSON follow the length field in ``prefix``,
    checked against everything but the file's size."""
    try:
        header = json.loads(prefix[8 : 8 + length], parse_int=_bounded_int)
    except _LongInteger:
        raise ObjectFormatError(oid, "header holds an integer of more than 20 digits") from None
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deeply
        raise ObjectFormatError(oid, "header is not JSON") from None
    if not isinstance(header, dict) or set(header) != {TENSOR_KEY}:
        raise ObjectFormatError(oid, f"header must hold exactly one entry named {TENSOR_KEY!r}")
    entry = header[TENSOR_KEY]
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ObjectFormatError(oid, "tensor entry must have dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES or not DTYPES[dtype].in_safetensors:
        raise ObjectFormatError(oid, f"unknown dtype {dtype!r}")
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_OBJECT_DIMS
        and all(type(d) is int and d >= 0 for d in shape)
    ):
        raise ObjectFormatError(
            oid, f"shape must be a list of at most {MAX_OBJECT_DIMS} non-negative integers"
        )
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
    ):
        raise ObjectFormatError(oid, "data_offsets must be two integers")
    begin, end = offsets
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if begin != 0 or end != nbytes:
        raise ObjectFormatError(
            oid, f"data_offsets {offsets} disagree with {dtype}{shape} ({nbytes} bytes)"
        )
    return ObjectHeader(dtype, tuple(shape), 8 + length, nbytes)


def read_header(oid: str, stream: BinaryIO, file_size: int) -> ObjectHeader:
    """Read and validate the header at the start of ``stream``; leaves the stream after it."""
    head = stream.read(8)
    if len(head) == 8:
        (length,) = struct.unpack("<Q", head)
        if length <= MAX_OBJECT_HEADER:
            head += stream.read(length)
    return parse_header_bytes(oid, head, file_size)
