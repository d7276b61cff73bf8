"""safetensors files: each tensor becomes an object; the header is the skeleton.

Layout (safetensors spec): an 8-byte little-endian header length N, N bytes of
JSON header, then the data. Each header entry has ``dtype``, ``shape`` and
``data_offsets`` relative to the data start; the offsets must tile the data
exactly, with no gaps and no overlaps. An optional ``__metadata__`` maps
strings to strings. Anything that breaks these rules is stored opaque.
:func:`parse_safetensors_header` is the one reader of such headers: the merge
driver reads a stored skeleton with it too.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

from ..dtypes import DTYPES
from ..manifest import MAX_DIMS, TensorEntry
from .base import CleanContext, NotThisFormat, ParsedFile

__all__ = [
    "MAX_HEADER_BYTES",
    "HeaderEntry",
    "SafetensorsHeader",
    "looks_like_safetensors",
    "parse_safetensors",
    "parse_safetensors_header",
]

MAX_HEADER_BYTES = 100 << 20  # the reference reader's limit


def looks_like_safetensors(head: bytes) -> bool:
    """Whether a file starting with ``head`` is tried as safetensors: a header length of
    at least 2 (``{}``), then ``{``. A length over :data:`MAX_HEADER_BYTES` is tried too,
    so that :func:`parse_safetensors` refuses it by name; the file is stored opaque either way.
    """
    if len(head) < 10:
        return False
    (length,) = struct.unpack_from("<Q", head)
    return length >= 2 and head[8:9] == b"{"


def _bounded_int(digits: str) -> int:
    """Offsets and sizes fit in 64 bits: 20 digits. Converting n digits costs n**2, and
    Python's own limit may be off (PYTHONINTMAXSTRDIGITS=0)."""
    if len(digits.lstrip("-")) > 20:
        raise NotThisFormat("safetensors header: an integer of more than 20 digits")
    return int(digits)


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise NotThisFormat("safetensors header repeats a key")
    return dict(pairs)


@dataclass(frozen=True)
class HeaderEntry:
    """One tensor of a safetensors header; ``begin``/``end`` are relative to the data start."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    metadata: dict[str, str] | None
    entries: list[HeaderEntry]  # in data order; they tile the data from 0, without gaps

    @property
    def data_size(self) -> int:
        return self.entries[-1].end if self.entries else 0


def parse_safetensors_header(raw: bytes) -> SafetensorsHeader:
    """The header's JSON (the bytes after its length), checked whole before any data is read.

    The one reader of safetensors headers: clean uses it on a file, the merge
    driver on a stored skeleton. Anything that breaks the format's rules is
    :class:`NotThisFormat` with the reason, never another exception.
    """
    if len(raw) > MAX_HEADER_BYTES:
        raise NotThisFormat(f"safetensors header of {len(raw)} bytes is over the limit")
    try:
        header = json.loads(raw, object_pairs_hook=_reject_duplicates, parse_int=_bounded_int)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise NotThisFormat("safetensors header is not JSON") from None
    except RecursionError:
        raise NotThisFormat("safetensors header is nested too deeply") from None
    if not isinstance(header, dict):
        raise NotThisFormat("safetensors header is not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise NotThisFormat("safetensors __metadata__ must map strings to strings")
    entries = sorted(
        (_entry(name, info) for name, info in header.items()),
        key=lambda entry: (entry.begin, entry.end, entry.name),
    )
    cursor = 0
    for entry in entries:
        if entry.begin != cursor:
            raise NotThisFormat(f"tensor {entry.name!r}: data_offsets leave a gap or overlap")
        cursor = entry.end
    return SafetensorsHeader(metadata, entries)


def _entry(name: str, info: object) -> HeaderEntry:
    if not name:
        raise NotThisFormat("a tensor with an empty name")
    if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}):
        raise NotThisFormat(f"tensor {name!r}: bad header entry")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not (isinstance(dtype, str) and dtype in DTYPES and DTYPES[dtype].in_safetensors):
        raise NotThisFormat(f"tensor {name!r}: dtype {dtype!r} is not supported")
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_DIMS
        and all(type(d) is int and d >= 0 for d in shape)
    ):
        # More dimensions than a manifest holds; and the product of a million of
        # them would take hours to compute.
        raise NotThisFormat(f"tensor {name!r}: bad shape (at most {MAX_DIMS} dimensions)")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int and o >= 0 for o in offsets)
    ):
        raise NotThisFormat(f"tensor {name!r}: bad data_offsets")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPES[dtype].itemsize:
        raise NotThisFormat(f"tensor {name!r}: data_offsets disagree with dtype and shape")
    return HeaderEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def parse_safetensors(ctx: CleanContext) -> ParsedFile:
    (length,) = struct.unpack("<Q", ctx.keep(8, "the safetensors header length"))
    if length > MAX_HEADER_BYTES:
        raise NotThisFormat(f"safetensors header of {length} bytes is over the limit")
    header = parse_safetensors_header(ctx.keep(length, "the safetensors header"))
    tensors = []
    for entry in header.entries:
        oid = ctx.store_payload(entry.dtype, entry.shape, entry.end - entry.begin, (entry.name,))
        tensors.append(TensorEntry(entry.name, entry.dtype, entry.shape, oid))
    if not ctx.source.at_eof():
        raise NotThisFormat("bytes after the last tensor")
    return ParsedFile("safetensors", tensors)
