"""Fuzz the object header reader: the security boundary for objects fetched from other people.

It either refuses the bytes with ObjectFormatError naming the object, or
returns a header whose numbers agree with each other and with the file size.
"""

from __future__ import annotations

import json
import math
import struct

from fuzz_settings import fuzz
from hypothesis import given
from hypothesis import strategies as st

from git_theta_filter.dtypes import DTYPES
from git_theta_filter.store.object_format import (
    MAX_OBJECT_HEADER,
    ObjectFormatError,
    encode_header,
    parse_header_bytes,
)

OID = "e" * 64
VALUES = st.one_of(
    st.integers(-2, 2**64),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.floats(allow_nan=False),
)


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, int]:
    entry = {
        "dtype": draw(st.sampled_from(["F32", "BF16", "U8", "C128", "F8_E5M2", "x"]) | VALUES),
        "shape": draw(
            st.lists(st.integers(0, 9), max_size=3) | st.lists(VALUES, max_size=2) | VALUES
        ),
        "data_offsets": draw(
            st.lists(st.integers(0, 200), min_size=2, max_size=2) | st.lists(VALUES, max_size=3)
        ),
    }
    if draw(st.integers(0, 5)) == 0:
        del entry[draw(st.sampled_from(sorted(entry)))]
    header = (
        {"tensor": entry}
        if draw(st.integers(0, 5))
        else draw(st.dictionaries(st.text(max_size=6), VALUES, max_size=2))
    )
    body = json.dumps(header).encode() + b" " * draw(st.integers(0, 7))
    length = draw(
        st.sampled_from([len(body)] * 6 + [0, 7, len(body) + 1, MAX_OBJECT_HEADER + 1, 2**64 - 1])
    )
    prefix = struct.pack("<Q", length) + body
    size = draw(
        st.sampled_from([len(prefix), len(prefix) + 4, len(prefix) + 24]) | st.integers(0, 400)
    )
    return prefix[: draw(st.sampled_from([len(prefix)] * 4 + [0, 5, 9]))], size


def check(prefix: bytes, size: int) -> None:
    try:
        header = parse_header_bytes(OID, prefix, size)
    except ObjectFormatError as exc:
        assert exc.oid == OID
        return
    assert DTYPES[header.dtype].in_safetensors
    assert header.nbytes == math.prod(header.shape) * DTYPES[header.dtype].itemsize
    assert header.data_offset + header.nbytes == size
    assert header.data_offset - 8 <= MAX_OBJECT_HEADER


@fuzz(800)
@given(headers())
def test_structured_headers_are_refused_or_consistent(case: tuple[bytes, int]) -> None:
    check(*case)


@fuzz(300)
@given(st.binary(max_size=120), st.integers(0, 300))
def test_arbitrary_bytes_are_refused_or_consistent(prefix: bytes, size: int) -> None:
    check(prefix, size)


@fuzz(200)
@given(
    st.sampled_from(sorted(d for d, spec in DTYPES.items() if spec.in_safetensors)),
    st.lists(st.integers(0, 6), max_size=4),
)
def test_every_header_we_write_reads_back(dtype: str, shape: list[int]) -> None:
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    header = parse_header_bytes(
        OID,
        encode_header(dtype, tuple(shape), nbytes),
        len(encode_header(dtype, tuple(shape), nbytes)) + nbytes,
    )
    assert (header.dtype, header.shape, header.nbytes) == (dtype, tuple(shape), nbytes)
