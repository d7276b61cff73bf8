"""Fuzz the clean path (torch zip and safetensors parsers,
skeleton and splicing) with damaged files.

Whatever the bytes, clean stores them (per tensor or opaque) and smudge gives
them back exactly: no input may raise, lose a byte, or leave a temp file.
"""

from __future__ import annotations

import io
import json
import struct

import torch
from attacks import torch_zip_bytes
from fuzz_settings import fuzz, scratch_dir
from hypothesis import given
from hypothesis import strategies as st

from git_theta_filter.clean import clean
from git_theta_filter.manifest import Manifest
from git_theta_filter.smudge import prepare_smudge
from git_theta_filter.store.local import LocalStore

STORE = LocalStore(scratch_dir() / "theta")
SEEDS = {
    "torch-zip": torch_zip_bytes(
        {
            "w": torch.arange(6.0).reshape(2, 3),
            "v": torch.arange(4.0)[1:3],
            "b": torch.zeros(0),
            "epoch": 2,
        }
    ),
    "safetensors": None,  # built below, from a header the tests also vary
}


def safetensors_bytes(header: dict, data: bytes, pad: int = 0) -> bytes:
    body = json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(body)) + body + data


SEEDS["safetensors"] = safetensors_bytes(
    {
        "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "I8", "shape": [3], "data_offsets": [16, 19]},
        "__metadata__": {"k": "v"},
    },
    bytes(range(19)),
)


def round_trip(data: bytes) -> Manifest:
    manifest_bytes = clean(io.BytesIO(data), STORE, "fuzz.pth", warn=lambda message: None)
    manifest = Manifest.parse(manifest_bytes)
    out = bytearray()
    prepare_smudge(manifest_bytes, STORE, "fuzz.pth").write(out.extend)
    assert bytes(out) == data
    assert not any(STORE.tmp_dir.iterdir()), "a temp file was left behind"
    return manifest


@st.composite
def damaged(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "set", "delete", "insert", "truncate"]))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[at] = draw(st.sampled_from([0x00, 0xFF, ord("P"), ord("K"), 0x80]))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
    return bytes(data)


@fuzz(300)
@given(damaged(SEEDS["torch-zip"]))
def test_damaged_torch_zip_round_trips(data: bytes) -> None:
    round_trip(data)


@fuzz(200)
@given(damaged(SEEDS["safetensors"]))
def test_damaged_safetensors_round_trips(data: bytes) -> None:
    round_trip(data)


DTYPES = st.sampled_from(
    ["F32", "F16", "BF16", "I8", "U8", "BOOL", "I64", "F64", "C64", "F8_E4M3", "Q4", "f32"]
)
JSON_VALUES = st.one_of(
    st.integers(-3, 40),
    st.just(2**64),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.floats(allow_nan=False),
)


@st.composite
def safetensors_headers(draw: st.DrawFn) -> bytes:
    """Headers of every shape: right and wrong offsets, odd dtypes and shapes, extra keys,
    metadata.
    """
    header: dict = {}
    cursor = 0
    for index in range(draw(st.integers(0, 4))):
        shape = draw(st.lists(st.integers(0, 4), max_size=3) | st.lists(JSON_VALUES, max_size=2))
        start = draw(st.sampled_from([cursor, cursor, cursor + 1, max(cursor - 1, 0), 0]))
        length = draw(st.integers(0, 24))
        entry: dict = {
            "dtype": draw(DTYPES),
            "shape": shape,
            "data_offsets": [start, start + length],
        }
        if draw(st.integers(0, 9)) == 0:
            entry[draw(st.sampled_from(["extra", "dtype", "data_offsets"]))] = draw(JSON_VALUES)
        header[draw(st.sampled_from(["w", "b", "x.y", "", f"t{index}"]))] = entry
        cursor = start + length
    if draw(st.booleans()):
        header["__metadata__"] = draw(
            st.dictionaries(st.text(max_size=3), st.text(max_size=3) | JSON_VALUES, max_size=2)
        )
    data = draw(st.binary(max_size=80))
    return safetensors_bytes(header, data, pad=draw(st.integers(0, 7)))


@fuzz(400)
@given(safetensors_headers())
def test_any_safetensors_header_round_trips_and_tensors_tile_the_data(data: bytes) -> None:
    manifest = round_trip(data)
    if manifest.format == "safetensors":
        (length,) = struct.unpack_from("<Q", data)
        assert sum(s.length for s in manifest.splices) == len(data) - 8 - length
        for tensor in manifest.tensors:
            assert tensor.nbytes == next(s.length for s in manifest.splices if s.oid == tensor.oid)
