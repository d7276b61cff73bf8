"""Crafted manifests, pickles, safetensors headers and LFS answers cannot cost unbounded
time or memory.

A manifest's work is bounded by the bytes its objects hold (docs/manifest.md,
"Work"); the pickle scanner runs in time linear in data.pkl's size whatever
the nesting; a safetensors header cannot make clean compute for hours. Each
case is refused with a named error, or the file is stored opaque and comes
back byte for byte. Time is never measured against a clock here (the suite
shares its machine): growth is measured as a ratio of CPU times, and a call
that would hang runs on a thread with a deadline far above its budget.
"""

from __future__ import annotations

import gc
import io
import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import within

from git_theta_filter.clean import clean
from git_theta_filter.formats.base import NotThisFormat
from git_theta_filter.formats.pickle_scan import MAX_DEPTH, PickleScanError, scan_pickle
from git_theta_filter.formats.safetensors_file import parse_safetensors_header
from git_theta_filter.formats.torch_zip_writer import read_stored_torch_zip
from git_theta_filter.manifest import WORK_FLOOR, WORK_RATIO, Manifest, ManifestError
from git_theta_filter.smudge import prepare_smudge
from git_theta_filter.store.lfs_protocol import (
    MAX_RESPONSE_BYTES,
    LfsProtocolError,
    parse_batch_response,
    parse_error_message,
    parse_ssh_authenticate,
)
from git_theta_filter.store.local import LocalStore

SHA = "5" * 64
SKELETON = "b" * 64


# -- manifests: work in proportion to the bytes stored -------------------------------------------


def manifest_text(size: int, tensors: list[str], splices: list[str], skeleton: str = SKELETON):
    lines = [
        "git-theta-manifest 1",
        "format torch-zip",
        f"size {size}",
        f"sha256 {SHA}",
        f"skeleton {skeleton}",
        *tensors,
        *splices,
    ]
    return ("\n".join(lines) + "\n").encode()


OID = "a" * 64
LIMIT_4 = WORK_RATIO * 4 + WORK_FLOOR  # the work limit for 4 stored bytes


def stride_zero_view() -> bytes:
    """One 4-byte object, read as 2**40 elements: 4 TiB of statistics."""
    return manifest_text(
        4, [f"tensor v F32 [{2**40}] {OID} offset=0 stride=[0]"], [f"splice 0 4 {OID}"]
    )


def overlapping_view() -> bytes:
    """A sliding window: 2**15 x 2**15 elements over 2**15 + 1 of them."""
    n = 2**15
    return manifest_text(
        4 * (2 * n),
        [f"tensor v F32 [{n},{n}] {OID} offset=0 stride=[1,1]"],
        [f"splice 0 {4 * 2 * n} {OID}"],
    )


MIB_16 = 16 << 20


def many_lines_over_one_object() -> bytes:
    """100 tensor lines over one 16 MiB object: 1600 MiB to read, the limit is 1280 MiB."""
    tensors = [f"tensor t{i:03d} F32 [{MIB_16 // 4}] {OID}" for i in range(100)]
    return manifest_text(MIB_16, tensors, [f"splice 0 {MIB_16} {OID}"])


def one_object_spliced_many_times() -> bytes:
    """One 16 MiB object spliced 100 times: a 1600 MiB file from 16 MiB."""
    splices = [f"splice {i * MIB_16} {MIB_16} {OID}" for i in range(100)]
    return manifest_text(MIB_16 * 100, [], splices)


WORK_CASES = {
    "stride-0-view-of-2-to-the-40": (
        stride_zero_view,
        f"tensors of more than {LIMIT_4} bytes from 4 stored bytes are over the work limit",
    ),
    "sliding-window-view": (overlapping_view, "the first over it is 'v'"),
    "100-tensor-lines-over-one-object": (
        many_lines_over_one_object,
        f"tensors of more than {WORK_RATIO * MIB_16 + WORK_FLOOR} bytes from {MIB_16} stored "
        "bytes are over the work limit (64 times the stored bytes, plus 268435456); the first "
        "over it is 't080'",
    ),
    "one-object-spliced-100-times": (
        one_object_spliced_many_times,
        f"a file of {100 * MIB_16} bytes from {MIB_16} stored bytes is over the work limit",
    ),
}


@pytest.mark.parametrize("name", sorted(WORK_CASES))
def test_a_manifest_over_the_work_limit_is_refused_before_any_object_is_read(
    name: str, tmp_path: Path
) -> None:
    make, message = WORK_CASES[name]
    data = make()
    with pytest.raises(ManifestError, match="over the work limit") as error:
        Manifest.parse(data)
    assert message in str(error.value)
    store = LocalStore(tmp_path / "theta")
    with pytest.raises(ManifestError, match="over the work limit"):
        prepare_smudge(data, store, f"{name}.pth")
    assert not store.objects_dir.exists()


def test_a_manifest_at_the_work_limit_parses() -> None:
    """The rule is exactly docs/manifest.md's: at the limit it parses, one byte over it does not."""
    elements = LIMIT_4 // 4
    at_limit = manifest_text(
        4, [f"tensor v F32 [{elements}] {OID} offset=0 stride=[0]"], [f"splice 0 4 {OID}"]
    )
    Manifest.parse(at_limit)
    over = at_limit.replace(f"[{elements}]".encode(), f"[{elements + 1}]".encode())
    with pytest.raises(ManifestError, match="over the work limit"):
        Manifest.parse(over)


def clean_bytes(data: bytes, tmp_path: Path) -> tuple[Manifest, list[str], LocalStore]:
    warnings: list[str] = []
    store = LocalStore(tmp_path / "theta")
    manifest = Manifest.parse(clean(io.BytesIO(data), store, "model.pth", warn=warnings.append))
    rebuilt = bytearray()
    prepare_smudge(manifest.render(), store, "model.pth").write(rebuilt.extend)
    assert bytes(rebuilt) == data
    return manifest, warnings, store


def saved(state: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_clean_stores_a_checkpoint_over_the_work_limit_opaque(tmp_path: Path) -> None:
    """torch.save keeps an expanded tensor as its one-element storage with stride 0: clean
    must not write the manifest that smudge would refuse.
    """
    data = saved({"mask": torch.zeros(1).expand(2**27), "w": torch.ones(3)})
    manifest, warnings, _ = clean_bytes(data, tmp_path)
    assert manifest.format == "opaque"
    assert len(warnings) == 1 and "its manifest would be refused" in warnings[0]
    assert "over the work limit" in warnings[0]
    # Below the limit the same kind of tensor is stored per tensor.
    small, warnings, _ = clean_bytes(saved({"mask": torch.zeros(1).expand(1000)}), tmp_path / "b")
    assert small.format == "torch-zip" and not warnings
    (mask,) = small.tensors
    assert (mask.shape, mask.stride) == ((1000,), (0,))


def test_clean_stores_a_checkpoint_whose_manifest_would_pass_32_MiB_opaque(tmp_path: Path) -> None:
    # 33.2 MB of names (under the scanner's 32 MiB), 33.7 MB of metric lines (over the manifest's).
    names = {f"{'k' * 1000}{i:05d}": float(i) for i in range(33_000)}
    manifest, warnings, _ = clean_bytes(saved(names), tmp_path)
    assert manifest.format == "opaque"
    assert len(warnings) == 1 and "over the 33554432-byte limit" in warnings[0]


# -- the pickle scanner: linear in data.pkl's size ----------------------------------------------


def nested_lists(n: int) -> bytes:
    """[[[...]]], n deep: EMPTY_LIST n times, then APPEND n - 1 times."""
    return b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."


def nested_dicts(n: int) -> bytes:
    return b"\x80\x02" + b"}X\x01\x00\x00\x00k" * (n - 1) + b"}" + b"s" * (n - 1) + b"."


def nested_tuples(n: int) -> bytes:
    return b"\x80\x02)" + b"\x85" * (n - 1) + b"."


def memo_chain(n: int) -> bytes:
    """Each list holds the previous one, fetched from the memo: deep, with a shallow stack."""
    out = bytearray(b"\x80\x02]r\x00\x00\x00\x00")
    for i in range(1, n):
        out += b"]j" + (i - 1).to_bytes(4, "little") + b"ar" + i.to_bytes(4, "little")
    return bytes(out + b".")


def long_key_over_many_children(n: int) -> bytes:
    """{<n-byte key>: [0.5] * n}: building every child's name would copy the key n times."""
    key = b"k" * n
    items = b"G?\xe0\x00\x00\x00\x00\x00\x00" * n
    return b"\x80\x02}X" + len(key).to_bytes(4, "little") + key + b"](" + items + b"es."


SHAPES = {
    "nested-lists": nested_lists,
    "nested-dicts": nested_dicts,
    "nested-tuples": nested_tuples,
    "memo-chain": memo_chain,
    "long-key-over-many-children": long_key_over_many_children,
}


def cpu_seconds(call: Callable[[], Any]) -> float:
    """CPU time of ``call()``, which may refuse its input (a nesting past MAX_DEPTH).

    The garbage collector is paused: its full passes walk every object the test
    process holds (torch's among them), which would make the time depend on
    the process, not on the pickle.
    """
    gc.collect()
    gc.disable()
    start = time.process_time()
    try:
        call()
    except PickleScanError:
        pass
    finally:
        elapsed = time.process_time() - start
        gc.enable()
    return elapsed


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_pickle_scanner_takes_time_linear_in_the_nesting(shape: str) -> None:
    """Four times the containers take about four times the CPU time (quadratic would be 16;
    a million nested lists took 440 s before). Past MAX_DEPTH levels the walk refuses, so
    this is mostly the unpickler's time. benchmarks/bench_parsers.py times the budget itself:
    a million nested containers scanned or refused in under 5 s.
    """
    make = SHAPES[shape]
    small, large = make(25_000), make(100_000)
    within(600, lambda: cpu_seconds(lambda: scan_pickle(small)))  # warm up
    # The best of three of each: the machine is shared, and noise only ever adds time.
    small_time = min(cpu_seconds(lambda: scan_pickle(small)) for _ in range(3))
    large_time = min(cpu_seconds(lambda: scan_pickle(large)) for _ in range(3))
    assert large_time / max(small_time, 1e-3) < 8, (small_time, large_time)


@pytest.mark.parametrize("shape", sorted(set(SHAPES) - {"long-key-over-many-children"}))
def test_a_pickle_nested_more_than_1000_levels_deep_is_refused(shape: str) -> None:
    make = SHAPES[shape]
    scan_pickle(make(MAX_DEPTH))  # 1000 containers, one in the other: the deepest is level 999
    with pytest.raises(PickleScanError, match="nested more than 1000 levels deep"):
        scan_pickle(make(MAX_DEPTH + 1))


def test_names_that_grow_with_the_key_length_are_refused_early() -> None:
    """A 1 MB key over 100 scalars, ten levels deep: each name would repeat the keys above
    it, 10**9 characters in all. Refused once they pass what a manifest can hold.
    """
    key = b"X" + (1 << 20).to_bytes(4, "little") + b"k" * (1 << 20)
    level = b"}" + key  # a dict, then its key; its value follows
    leaves = b"}" + b"".join(
        b"X\x01\x00\x00\x00" + bytes([65 + i % 26]) + b"K\x01s" for i in range(26)
    )
    data = b"\x80\x02" + level * 10 + leaves + b"s" * 10 + b"."
    with pytest.raises(PickleScanError, match="names of more than 33554432 characters"):
        within(600, lambda: scan_pickle(data))


def rebuild_with_size(size: tuple[int, ...]) -> bytes:
    """A tensor rebuilt with ``size`` and strides of 0, over a 4-byte storage."""
    tuple_of = lambda values: b"(" + b"".join(b"K" + bytes([v]) for v in values) + b"t"  # noqa: E731
    return (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n("
        + b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
        + b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ"
        + b"K\x00"
        + tuple_of(size)
        + tuple_of((0,) * len(size))
        + b"\x89ccollections\nOrderedDict\n)RtR."
    )


def test_a_tensor_with_a_million_dimensions_is_refused_without_multiplying_them() -> None:
    # Their product is 2**1000000: computed by repeated multiplication, it takes minutes.
    data = rebuild_with_size((2,) * 1_000_000)
    with pytest.raises(PickleScanError, match="at most 64 dimensions"):
        within(120, lambda: scan_pickle(data))
    scan_pickle(rebuild_with_size((2,) * 64))  # 64 is allowed


# -- safetensors headers --------------------------------------------------------------------------


def safetensors_with_header(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


SAFETENSORS_CASES = {
    "a-million-dimensions": (
        safetensors_with_header(
            json.dumps(
                {"t": {"dtype": "U8", "shape": [2] * 1_000_000, "data_offsets": [0, 1]}}
            ).encode(),
            b"x",
        ),
        "bad shape (at most 64 dimensions)",
    ),
    "nested-100k-deep": (
        safetensors_with_header(b'{"t":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "nested too deeply",
    ),
    "a-100k-digit-integer": (
        safetensors_with_header(
            b'{"t":{"dtype":"U8","shape":[' + b"9" * 100_000 + b'],"data_offsets":[0,1]}}', b"x"
        ),
        "an integer of more than 20 digits",
    ),
}


@pytest.mark.parametrize("name", sorted(SAFETENSORS_CASES))
def test_a_hostile_safetensors_header_is_stored_opaque_promptly(name: str, tmp_path: Path) -> None:
    data, reason = SAFETENSORS_CASES[name]
    manifest, warnings, _ = within(600, lambda: clean_bytes(data, tmp_path))
    assert manifest.format == "opaque"
    assert len(warnings) == 1 and reason in warnings[0], warnings


def test_a_safetensors_header_integer_is_bounded_whatever_pythons_digit_limit(
    no_digit_limit: None, tmp_path: Path
) -> None:
    """Converting n digits costs n**2: a 100 MB header of them would take hours."""
    header = b'{"t":{"dtype":"U8","shape":[' + b"9" * 200_000 + b'],"data_offsets":[0,1]}}'
    with pytest.raises(NotThisFormat, match="an integer of more than 20 digits"):
        parse_safetensors_header(header)
    manifest, warnings, _ = clean_bytes(safetensors_with_header(header, b"x"), tmp_path)
    assert manifest.format == "opaque" and "more than 20 digits" in warnings[0]


# -- what an LFS server answers ------------------------------------------------------------------

LFS_URL = "lfs+https://example.com/team/models.git/info/lfs"
LFS_OID = "c" * 64


def batch_answer(size: bytes) -> bytes:
    return b'{"objects":[{"oid":"' + LFS_OID.encode() + b'","size":' + size + b"}]}"


@pytest.mark.parametrize(
    "body",
    [
        batch_answer(b"9" * 5_000),  # past Python's digit limit: a ValueError escaped
        b"[" * 100_000 + b"]" * 100_000,
        b" " * (MAX_RESPONSE_BYTES + 1),
    ],
    ids=["a-5000-digit-integer", "nested-100k-deep", "over-16-MiB"],
)
def test_an_lfs_batch_answer_over_its_budget_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(LfsProtocolError, match="the LFS server sent an invalid answer"):
        parse_batch_response(LFS_URL, body, "download", {LFS_OID: 4})
    assert parse_error_message(body) == ""  # an error response's message: none, no exception


def test_an_lfs_answer_integer_is_bounded_whatever_pythons_digit_limit(
    no_digit_limit: None,
) -> None:
    for parse in (
        lambda body: parse_batch_response(LFS_URL, body, "download", {LFS_OID: 4}),
        lambda body: parse_ssh_authenticate(LFS_URL, body),
    ):
        with pytest.raises(LfsProtocolError, match="an integer of more than 20 digits"):
            parse(batch_answer(b"9" * 200_000))


def test_reading_a_stored_torch_zip_takes_time_linear_in_its_storages(tmp_path: Path) -> None:
    """The merge driver reads each side's stored archive; every storage's record was found
    by a scan of all the records, so a crafted archive of n records cost n² (a side of
    6,000 tensors took 541 ms, 168 ms since). Four times the storages take about four
    times the CPU time: quadratic would be 16."""
    store = LocalStore(tmp_path / "theta")
    manifests = {}
    for count in (2_000, 8_000):
        data = saved({f"t{i}": torch.zeros(1) for i in range(count)})
        manifests[count] = Manifest.parse(clean(io.BytesIO(data), store, "model.pth"))

    def seconds(count: int) -> float:
        return min(
            cpu_seconds(lambda: read_stored_torch_zip(manifests[count], store, "model.pth"))
            for _ in range(3)
        )

    small, large = seconds(2_000), seconds(8_000)
    assert large / max(small, 1e-3) < 8, (small, large)
