"""safetensors files: each tensor becomes an object; the header is the skeleton.

Layout (safetensors spec): an 8-byte little-endian header length N, N bytes of
JSON header, then the data. Each header entry has ``dtype``, ``shape`` and
``data_offsets`` relative to the data start; the offsets must tile the data
exactly, with no gaps and no overlaps. An optional ``__metadata__`` maps
strings to strings. Anything that breaks these rules is stored opaque.
"""

from __future__ import annotations

import json
import math
import struct

from ..dtypes import DTYPES
from ..manifest import MAX_DIMS, TensorEntry
from .base import CleanContext, NotThisFormat, ParsedFile

__all__ = ["MAX_HEADER_BYTES", "looks_like_safetensors", "parse_safetensors"]

MAX_HEADER_BYTES = 100 << 20  # the reference reader's limit


def looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 10:
        return False
    (length,) = struct.unpack_from("<Q", head)
    return 2 <= length <= MAX_HEADER_BYTES and head[8:9] == b"{"


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise NotThisFormat("safetensors header repeats a key")
    return dict(pairs)


def parse_safetensors(ctx: CleanContext) -> ParsedFile:
    (length,) = struct.unpack("<Q", ctx.keep(8, "the safetensors header length"))
    raw = ctx.keep(length, "the safetensors header")
    try:
        header = json.loads(raw, object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise NotThisFormat("safetensors header is not JSON") from None
    except RecursionError:
        raise NotThisFormat("safetensors header is nested too deeply") from None
    except ValueError as exc:  # an integer of more digits than int() takes
        raise NotThisFormat(f"safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise NotThisFormat("safetensors header is not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise NotThisFormat("safetensors __metadata__ must map strings to strings")

    entries = []
    for name, info in header.items():
        if not name:
            raise NotThisFormat("a tensor with an empty name")
        if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}):
            raise NotThisFormat(f"tensor {name!r}: bad header entry")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES or not DTYPES[dtype].in_safetensors:
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
            isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
        ):
            raise NotThisFormat(f"tensor {name!r}: bad data_offsets")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPES[dtype].itemsize:
            raise NotThisFormat(f"tensor {name!r}: data_offsets disagree with dtype and shape")
        entries.append((offsets[0], offsets[1], name, dtype, tuple(shape)))
    entries.sort()

    tensors = []
    cursor = 0
    for begin, end, name, dtype, shape in entries:
        if begin != cursor:
            raise NotThisFormat(f"tensor {name!r}: data_offsets leave a gap or overlap")
        oid = ctx.store_payload(dtype, shape, end - begin, (name,))
        tensors.append(TensorEntry(name, dtype, shape, oid))
        cursor = end
    if not ctx.source.at_eof():
        raise NotThisFormat("bytes after the last tensor")
    return ParsedFile("safetensors", tensors)
