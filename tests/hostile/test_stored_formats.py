"""One hardened reader per stored format, shared by clean, merge and fsck (issue 10, class 9).

A manifest from another branch names a skeleton that clean never saw: the
merge driver reads the other side's torch zip records and data.pkl, or its
safetensors header, from it, and ``git theta fsck --check-pickles`` reads
data.pkl. Each reads through the same reader clean uses, which checks sizes
and compression before it reads anything, reads only skeleton bytes, and
turns every malformed input into a named error naming the file. Before, a
crafted skeleton made the merge driver inflate a zip bomb before checking
compression, read every tensor payload into memory for a central directory
that claimed to span the file, crash on a newer zip version
(``NotImplementedError``) and on a safetensors header such as ``[1]``
(``TypeError``).
"""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from attacks import RawEntry, raw_zip, torch_entries, torch_zip_bytes

from git_theta_filter.clean import clean
from git_theta_filter.formats.base import NotThisFormat
from git_theta_filter.formats.safetensors_writer import (
    SafetensorsHeaderError,
    read_stored_safetensors,
)
from git_theta_filter.formats.torch_zip_writer import ArchiveLayoutError, read_stored_torch_zip
from git_theta_filter.formats.zip_directory import read_zip_directory
from git_theta_filter.manifest import Manifest, Splice, TensorEntry
from git_theta_filter.merge import Strategy, merge_manifests
from git_theta_filter.pickle_check import _check_one
from git_theta_filter.store.local import LocalStore

SHA = "5" * 64
PATH = "model.pth"


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "theta")


def stored(store: LocalStore, data: bytes, payload: bytes, format: str, sha256: str = SHA) -> bytes:
    """A manifest of ``data`` with ``payload`` (found in it) spliced out as tensor ``t``, the
    rest its skeleton: what a crafted commit can hold."""
    at = data.index(payload)
    skeleton = store.write_bytes(data[:at] + data[at + len(payload) :])
    oid = store.write_bytes(payload, "F32", (len(payload) // 4,))
    manifest = Manifest(
        format,
        len(data),
        sha256,
        skeleton,
        tensors=[TensorEntry("t", "F32", (len(payload) // 4,), oid)],
        splices=[Splice(at, len(payload), oid)],
    )
    return manifest.render()


def recommitted(manifest: Manifest) -> Manifest:
    """``manifest``, changed by a test, as a commit would hold it: rendered and parsed back,
    so it has passed every check a manifest gets before a reader sees it."""
    return Manifest.parse(manifest.render())


def merge_with_theirs(store: LocalStore, theirs: bytes, format: str) -> object:
    """Merge a good ``base``/``ours`` with a crafted ``theirs`` that changed tensor ``t``."""
    good = torch.arange(4, dtype=torch.float32)
    if format == "torch-zip":
        data = torch_zip_bytes({"t": good})
    else:
        data = safetensors_bytes({"t": good.numpy().tobytes()})
    # Base and ours differ only in their sha256 line, so the driver merges tensor by tensor.
    base = stored(store, data, good.numpy().tobytes(), format, sha256="6" * 64)
    ours = stored(store, data, good.numpy().tobytes(), format)
    return merge_manifests(base, ours, theirs, store, Strategy.parse("conflict"), PATH)


def peak_bytes(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        call()
    except Exception:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


# -- torch zip skeletons -------------------------------------------------------------------------

PAYLOAD = torch.arange(4, 8, dtype=torch.float32)


def checkpoint(tensor: torch.Tensor = PAYLOAD) -> bytes:
    return torch_zip_bytes({"t": tensor})


def newer_zip_version(data: bytes) -> bytes:
    """The first central entry needs zip version 25.5 to extract."""
    out = bytearray(data)
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<H", out, central + 6, 255)
    return bytes(out)


def deflated(name: bytes, data: bytes) -> RawEntry:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = compressor.compress(data) + compressor.flush()
    return RawEntry(name, packed, method=8, crc=zlib.crc32(data), uncompressed_size=len(data))


def deflated_data_pkl(inflated: int = 64 << 20) -> bytes:
    """data.pkl deflated from ``inflated`` bytes (its pickle, then zeros) to a few KB."""
    entries = [RawEntry(name.encode(), data) for name, data in torch_entries(checkpoint())]
    pickle = entries[0].data + bytes(inflated - len(entries[0].data))
    entries[0] = deflated(entries[0].name, pickle)
    return raw_zip(entries)


def directory_over_the_payloads(data: bytes) -> bytes:
    """The zip64 end record (torch writes one) says the central directory is the whole
    file before it."""
    out = bytearray(data)
    end = data.rindex(b"PK\x06\x06")
    struct.pack_into("<QQ", out, end + 40, end, 0)  # its size, then its offset
    return bytes(out)


def local_header_past_the_end(data: bytes) -> bytes:
    out = bytearray(data)
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", out, central + 42, len(data) + 100)
    return bytes(out)


def overlapping_records(data: bytes) -> bytes:
    """The second central entry points at the first record's local header."""
    out = bytearray(data)
    second = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 4)
    struct.pack_into("<I", out, second + 42, 0)
    return bytes(out)


def data_pkl_second(archive: bytes) -> bytes:
    """The same records, with data.pkl after ``.format_version``."""
    entries = [RawEntry(name.encode(), data) for name, data in torch_entries(archive)]
    entries[0], entries[1] = entries[1], entries[0]
    return raw_zip(entries)


def data_pkl_of_two_sizes(data: bytes) -> bytes:
    """data.pkl, stored, is one byte longer uncompressed than compressed in its central entry."""
    out = bytearray(data)
    central = data.index(b"PK\x01\x02")
    (compressed,) = struct.unpack_from("<I", data, central + 20)
    struct.pack_into("<I", out, central + 24, compressed + 1)
    return bytes(out)


def last_record_into_the_central_directory(data: bytes) -> bytes:
    """The last record's sizes, both of them, reach 100 bytes past the central directory's start."""
    out = bytearray(data)
    last = data.rindex(b"PK\x01\x02")
    (size,) = struct.unpack_from("<I", data, last + 20)
    struct.pack_into("<II", out, last + 20, size + 100, size + 100)
    return bytes(out)


TORCH_ZIP_CASES = {
    "newer-zip-version": (lambda: newer_zip_version(checkpoint()), "zip file version 25.5"),
    "deflated-data-pkl": (deflated_data_pkl, "compressed"),
    "central-directory-over-the-payloads": (
        lambda: directory_over_the_payloads(checkpoint()),
        "lies in a tensor payload, not in the skeleton",
    ),
    "local-header-past-the-end": (
        lambda: local_header_past_the_end(checkpoint()),
        "has no local header",
    ),
    "overlapping-records": (
        lambda: overlapping_records(checkpoint()),
        "overlaps the record before it",
    ),
    "data-pkl-not-first": (
        lambda: data_pkl_second(checkpoint()),
        "the first record is not data.pkl",
    ),
    "stored-record-of-two-sizes": (
        lambda: data_pkl_of_two_sizes(checkpoint()),
        "record 'archive/data.pkl': a stored record of two sizes",
    ),
    "record-running-into-the-central-directory": (
        lambda: last_record_into_the_central_directory(checkpoint()),
        "record 'archive/.data/serialization_id' runs into the central directory",
    ),
}


@pytest.mark.parametrize("case", sorted(TORCH_ZIP_CASES))
def test_merge_driver_refuses_a_crafted_torch_zip_skeleton_by_name(
    store: LocalStore, case: str
) -> None:
    make, reason = TORCH_ZIP_CASES[case]
    theirs = stored(store, make(), PAYLOAD.numpy().tobytes(), "torch-zip")
    with pytest.raises(ArchiveLayoutError) as caught:
        merge_with_theirs(store, theirs, "torch-zip")
    assert str(caught.value).startswith(f"{PATH}: cannot rewrite the torch zip: ")
    assert reason in str(caught.value)


@pytest.mark.parametrize("case", sorted(TORCH_ZIP_CASES))
def test_fsck_check_pickles_reports_a_crafted_torch_zip_skeleton_unchecked(
    store: LocalStore, case: str
) -> None:
    make, reason = TORCH_ZIP_CASES[case]
    manifest = Manifest.parse(stored(store, make(), PAYLOAD.numpy().tobytes(), "torch-zip"))
    report = _check_one(store, manifest, PATH, "1" * 40)
    assert report.suspicious and report.unchecked is not None
    assert report.unchecked.startswith(f"{PATH}: cannot read data.pkl: ")
    if case != "overlapping-records":  # data.pkl itself is intact there
        assert reason in report.unchecked


def test_an_archive_of_no_records_is_refused_for_lacking_data_pkl() -> None:
    buffer = io.BytesIO()
    zipfile.ZipFile(buffer, "w").close()  # the end record alone
    empty = buffer.getvalue()
    with pytest.raises(NotThisFormat, match="the first record is not data.pkl"):
        read_zip_directory(empty, [], len(empty))


def test_readers_of_a_crafted_torch_zip_allocate_no_more_than_its_skeleton(
    store: LocalStore,
) -> None:
    """A 64 MiB deflated data.pkl is never inflated, and a central directory that claims
    the whole file never makes a reader load the 16 MiB of tensor payload in it."""
    big = torch.arange(4 << 20, dtype=torch.float32)
    crafted = {
        "bomb": stored(store, deflated_data_pkl(), PAYLOAD.numpy().tobytes(), "torch-zip"),
        "payloads": stored(
            store, directory_over_the_payloads(checkpoint(big)), big.numpy().tobytes(), "torch-zip"
        ),
    }
    for name, theirs in crafted.items():
        manifest = Manifest.parse(theirs)
        merge_peak = peak_bytes(lambda t=theirs: merge_with_theirs(store, t, "torch-zip"))
        fsck_peak = peak_bytes(lambda m=manifest: _check_one(store, m, PATH, "1" * 40))
        assert merge_peak < 4 << 20 and fsck_peak < 4 << 20, (name, merge_peak, fsck_peak)


def test_clean_stores_a_zip_that_needs_a_newer_zip_version_opaque(
    store: LocalStore,
) -> None:
    """zipfile raises NotImplementedError for it, which escaped clean (found by fuzzing)."""
    data = newer_zip_version(checkpoint())
    warnings: list[str] = []
    manifest = Manifest.parse(clean(io.BytesIO(data), store, PATH, warn=warnings.append))
    assert manifest.format == "opaque"
    assert len(warnings) == 1 and "zip file version 25.5" in warnings[0]


# -- a stored torch zip against its manifest -----------------------------------------------------

PAYLOAD_BYTES = PAYLOAD.numpy().tobytes()


def plain_archive(store: LocalStore) -> Manifest:
    return Manifest.parse(stored(store, checkpoint(), PAYLOAD_BYTES, "torch-zip"))


def a_record_deflated(store: LocalStore) -> Manifest:
    """``.format_version`` deflated; data.pkl and the storage record stay stored."""
    entries = [RawEntry(name.encode(), data) for name, data in torch_entries(checkpoint())]
    assert entries[1].name == b"archive/.format_version"
    entries[1] = deflated(entries[1].name, entries[1].data)
    return Manifest.parse(stored(store, raw_zip(entries), PAYLOAD_BYTES, "torch-zip"))


def a_tensor_renamed(store: LocalStore) -> Manifest:
    manifest = plain_archive(store)
    manifest.tensors = [manifest.tensors[0]._replace(name="u")]
    return recommitted(manifest)


def a_splice_short_of_its_storage(store: LocalStore) -> Manifest:
    """The storage record's last 4 bytes stay in the skeleton."""
    return Manifest.parse(stored(store, checkpoint(), PAYLOAD_BYTES[:-4], "torch-zip"))


def cleaned(store: LocalStore, tensor: torch.Tensor) -> Manifest:
    """``{"t": tensor}`` torch.save'd and cleaned: its manifest as clean writes it."""
    return Manifest.parse(clean(io.BytesIO(checkpoint(tensor)), store, PATH))


def a_tensor_line_changed(
    tensor: torch.Tensor, **changes: object
) -> Callable[[LocalStore], Manifest]:
    """A crafted manifest: the line of ``tensor``, cleaned, with ``changes`` made to it,
    so it no longer says what data.pkl says of the tensor."""

    def make(store: LocalStore) -> Manifest:
        manifest = cleaned(store, tensor)
        (line,) = manifest.tensors
        manifest.tensors = [line._replace(**changes)]
        assert manifest.tensors != [line]
        return recommitted(manifest)

    return make


# A view of elements 2..5 of a 12-element storage: its line is "F32 [4] offset=2 stride=[1]".
VIEW = torch.arange(12, dtype=torch.float32)[2:6]

ARCHIVE_CASES = {
    "a-record-deflated": (a_record_deflated, "record 'archive/.format_version' is compressed"),
    "a-tensor-data-pkl-does-not-name": (
        a_tensor_renamed,
        "data.pkl names other tensors than the manifest",
    ),
    "a-splice-short-of-its-storage": (
        a_splice_short_of_its_storage,
        "storage 0 is not one of the manifest's splices",
    ),
    "a-tensor-line-of-another-dtype": (
        a_tensor_line_changed(PAYLOAD, dtype="I32"),
        "data.pkl has tensor 't' as F32 [4], the manifest as I32 [4]",
    ),
    "a-tensor-line-of-another-shape": (
        a_tensor_line_changed(PAYLOAD, shape=(2, 2)),
        "data.pkl has tensor 't' as F32 [4], the manifest as F32 [2,2]",
    ),
    "a-view-line-of-another-offset": (
        a_tensor_line_changed(VIEW, offset=0),
        "data.pkl has tensor 't' as F32 [4] offset=2 stride=[1], "
        "the manifest as F32 [4] offset=0 stride=[1]",
    ),
    "a-view-line-of-another-stride": (
        a_tensor_line_changed(VIEW, stride=(2,)),
        "data.pkl has tensor 't' as F32 [4] offset=2 stride=[1], "
        "the manifest as F32 [4] offset=2 stride=[2]",
    ),
    "a-whole-tensor-line-given-a-view": (
        a_tensor_line_changed(PAYLOAD, offset=0, stride=(1,)),
        "data.pkl has tensor 't' as F32 [4], the manifest as F32 [4] offset=0 stride=[1]",
    ),
}


@pytest.mark.parametrize("case", sorted(ARCHIVE_CASES))
def test_reading_a_stored_torch_zip_refuses_records_that_do_not_fit_its_manifest(
    store: LocalStore, case: str
) -> None:
    make, reason = ARCHIVE_CASES[case]
    with pytest.raises(ArchiveLayoutError) as caught:
        read_stored_torch_zip(make(store), store, PATH)
    assert str(caught.value) == f"{PATH}: cannot rewrite the torch zip: {reason}"


def an_unsigned_data_descriptor(store: LocalStore) -> Manifest:
    """The data descriptor after the storage's payload (torch sets flag bit 3) lost its
    signature, so the CRC-32 the writer would patch is not where it looks."""
    data = bytearray(checkpoint())
    after = data.index(PAYLOAD_BYTES) + len(PAYLOAD_BYTES)
    assert data[after : after + 4] == b"PK\x07\x08"
    data[after : after + 4] = b"PK\x00\x00"
    return Manifest.parse(stored(store, bytes(data), PAYLOAD_BYTES, "torch-zip"))


def a_serialization_id_spliced_out(store: LocalStore) -> Manifest:
    """The serialization id's 40 digits are a splice too, as if they were a tensor's
    payload: the writer must not take other skeleton bytes for them."""
    data = checkpoint()
    name, digits = torch_entries(data)[-1]
    assert name == "archive/.data/serialization_id"
    payload_at, id_at = data.index(PAYLOAD_BYTES), data.index(digits)
    manifest = plain_archive(store)
    manifest.skeleton = store.write_bytes(
        data[:payload_at] + data[payload_at + len(PAYLOAD_BYTES) : id_at] + data[id_at + 40 :]
    )
    manifest.splices.append(Splice(id_at, 40, store.write_bytes(digits)))
    return recommitted(manifest)


# What the merge driver writes into storage 0, and why the rewrite must be refused.
REWRITE_CASES = {
    "an-object-of-another-length": (
        plain_archive,
        bytes(8),
        r"storage 0 is 16 bytes, object [0-9a-f]{64} holds 8$",
    ),
    "a-data-descriptor-without-its-signature": (
        an_unsigned_data_descriptor,
        bytes(16),
        r"record 'archive/data/0' has no signed data descriptor$",
    ),
    "a-serialization-id-inside-a-splice": (
        a_serialization_id_spliced_out,
        bytes(16),
        r"offset \d+ lies inside a tensor payload$",
    ),
}


@pytest.mark.parametrize("case", sorted(REWRITE_CASES))
def test_rewriting_a_stored_torch_zip_refuses_to_patch_bytes_that_are_not_what_it_expects(
    store: LocalStore, case: str
) -> None:
    make, payload, reason = REWRITE_CASES[case]
    archive = read_stored_torch_zip(make(store), store, PATH)
    oid = store.write_bytes(payload, "F32", (len(payload) // 4,))
    with pytest.raises(ArchiveLayoutError, match=reason) as caught:
        archive.with_payloads({"0": oid}, store)
    assert str(caught.value).startswith(f"{PATH}: cannot rewrite the torch zip: ")


# -- a stored torch zip's objects against clean's rule for their type ---------------------------


def with_byteorder(data: bytes, byteorder: bytes, after_storage: bool = False) -> bytes:
    """``data``'s records with ``byteorder`` as its byte order, moved after the storage
    record when ``after_storage``."""
    entries = [RawEntry(name.encode(), data) for name, data in torch_entries(data)]
    (at,) = [i for i, entry in enumerate(entries) if entry.name == b"archive/byteorder"]
    entries[at].data = byteorder
    if after_storage:
        entries.insert(
            entries.index(next(e for e in entries if b"data/0" in e.name)), entries.pop(at)
        )
    return raw_zip(entries)


def retyped(store: LocalStore, data: bytes, dtype: str, shape: tuple[int, ...]) -> Manifest:
    """``data`` cleaned, its storage's object then swapped for the same bytes typed ``dtype``
    ``shape``. The tensor line still says what data.pkl says; only the object differs."""
    manifest = Manifest.parse(clean(io.BytesIO(data), store, PATH))
    (splice,) = manifest.splices
    (line,) = manifest.tensors
    payload = data[splice.offset : splice.end]
    oid = store.write_bytes(payload, dtype, shape)
    assert oid != splice.oid
    manifest.splices = [splice._replace(oid=oid)]
    manifest.tensors = [line._replace(oid=oid)]
    return recommitted(manifest)


OBJECT_TYPE_CASES = {
    "bytes-for-a-float-storage": (checkpoint(), "U8", (16,), "F32 [4]"),
    "floats-of-another-shape": (checkpoint(), "F32", (2, 2), "F32 [4]"),
    "floats-for-a-big-endian-storage": (
        with_byteorder(checkpoint(), b"big"),
        "F32",
        (4,),
        "U8 [16]",
    ),
}


@pytest.mark.parametrize("case", sorted(OBJECT_TYPE_CASES))
def test_reading_a_stored_torch_zip_refuses_an_object_clean_would_not_have_typed_so(
    store: LocalStore, case: str
) -> None:
    """The merged file is cleaned again and must name the merge's objects: an object of
    the right bytes but another type comes back as another id, which the merge driver
    reported as its own bug."""
    data, dtype, shape, wanted = OBJECT_TYPE_CASES[case]
    manifest = retyped(store, data, dtype, shape)
    with pytest.raises(ArchiveLayoutError) as caught:
        read_stored_torch_zip(manifest, store, PATH)
    oid = manifest.splices[0].oid
    shown = f"{dtype} {list(shape)}"
    assert str(caught.value) == (
        f"{PATH}: cannot rewrite the torch zip: storage 0 is object {oid} of {shown}, "
        f"data.pkl makes it {wanted}"
    )


def test_a_stored_torch_zip_types_each_storage_by_the_byte_order_recorded_before_it(
    store: LocalStore,
) -> None:
    """Clean reads records in file order: a ``big`` byte order recorded after the storage
    leaves it typed as its tensor, and the reader must agree."""
    data = with_byteorder(checkpoint(), b"big", after_storage=True)
    manifest = Manifest.parse(clean(io.BytesIO(data), store, PATH))
    assert manifest.format == "torch-zip"
    archive = read_stored_torch_zip(manifest, store, PATH)
    assert archive.storage_of_tensor == {"t": "0"}


def test_merge_driver_refuses_a_side_whose_storage_object_is_typed_otherwise_by_name(
    store: LocalStore,
) -> None:
    """Their data.pkl differs from the base's (the tensor now requires grad), so theirs is
    the merged file's frame, and their storage's object is the right bytes as U8."""
    theirs = retyped(store, checkpoint(PAYLOAD.clone().requires_grad_()), "U8", (16,))
    with pytest.raises(ArchiveLayoutError, match="data.pkl makes it F32 \\[4\\]") as caught:
        merge_with_theirs(store, theirs.render(), "torch-zip")
    assert str(caught.value).startswith(f"{PATH}: cannot rewrite the torch zip: storage 0 ")


# -- safetensors skeletons -----------------------------------------------------------------------


def safetensors_bytes(payloads: dict[str, bytes], header: object = None) -> bytes:
    """A safetensors file of F32 tensors, or with ``header`` as its JSON header instead."""
    if header is None:
        header, offset = {}, 0
        for name, data in payloads.items():
            shape = [len(data) // 4]
            header[name] = {
                "dtype": "F32",
                "shape": shape,
                "data_offsets": [offset, offset + len(data)],
            }
            offset += len(data)
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body + b"".join(payloads.values())


THEIRS = torch.arange(4, 8, dtype=torch.float32).numpy().tobytes()
ENTRY = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
SAFETENSORS_CASES = {
    "a-list": ([1], "not an object"),
    "an-entry-that-is-a-number": ({"t": 1}, "bad header entry"),
    "one-data-offset": ({"t": {**ENTRY, "data_offsets": [0]}}, "bad data_offsets"),
    "offsets-as-strings": ({"t": {**ENTRY, "data_offsets": ["0", "16"]}}, "bad data_offsets"),
    "shape-not-a-list": ({"t": {**ENTRY, "shape": 4}}, "bad shape"),
    "unknown-dtype": ({"t": {**ENTRY, "dtype": "F128"}}, "dtype 'F128' is not supported"),
    "dtype-a-list": ({"t": {**ENTRY, "dtype": ["F32"]}}, "dtype ['F32'] is not supported"),
    "metadata-a-list": ({"__metadata__": [1], "t": ENTRY}, "__metadata__ must map strings"),
    "repeated-key": (
        b'{"t":' + json.dumps(ENTRY).encode() + b',"t":' + json.dumps(ENTRY).encode() + b"}",
        "repeats a key",
    ),
    "nested-100000-deep": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "a-5000-digit-integer": (
        b'{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,' + b"9" * 5000 + b"]}}",
        "an integer of more than 20 digits",
    ),
    "offsets-past-the-data": (
        {"t": {**ENTRY, "shape": [8], "data_offsets": [0, 32]}},
        "the manifest",
    ),
    "another-dtype-than-the-manifest": ({"t": {**ENTRY, "dtype": "I32"}}, "the manifest"),
}


@pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
def test_merge_driver_refuses_a_crafted_safetensors_header_by_name(
    store: LocalStore, case: str
) -> None:
    header, reason = SAFETENSORS_CASES[case]
    data = safetensors_bytes({"t": THEIRS}, header)
    theirs = stored(store, data, THEIRS, "safetensors")
    with pytest.raises(SafetensorsHeaderError) as caught:
        merge_with_theirs(store, theirs, "safetensors")
    assert str(caught.value).startswith(f"{PATH}: cannot rewrite the safetensors file: ")
    assert reason in str(caught.value)


# Files clean takes for safetensors (a header that starts with "{") that break its rules.
CLEAN_CASES = sorted(
    case
    for case, (header, _) in SAFETENSORS_CASES.items()
    if (header if isinstance(header, bytes) else json.dumps(header).encode()).startswith(b"{")
    and case not in ("offsets-past-the-data", "another-dtype-than-the-manifest")
)


@pytest.mark.parametrize("case", CLEAN_CASES)
def test_clean_stores_a_crafted_safetensors_file_opaque_with_the_same_reason(
    store: LocalStore, case: str
) -> None:
    """Clean reads headers with the merge driver's reader (a list as dtype escaped it as a
    TypeError before)."""
    header, reason = SAFETENSORS_CASES[case]
    data = safetensors_bytes({"t": THEIRS}, header)
    warnings: list[str] = []
    manifest = Manifest.parse(clean(io.BytesIO(data), store, PATH, warn=warnings.append))
    assert manifest.format == "opaque"
    assert len(warnings) == 1 and reason in warnings[0], warnings


def a_tensor_left_in_the_skeleton(store: LocalStore) -> Manifest:
    """Only "t" is spliced out, so "u"'s bytes follow the header in the skeleton, where a
    reader taking the whole skeleton for the header would parse them as JSON."""
    data = safetensors_bytes({"t": THEIRS, "u": bytes(8)})
    return Manifest.parse(stored(store, data, THEIRS, "safetensors"))


def a_tensor_the_header_lacks(store: LocalStore) -> Manifest:
    """Tensor "u" shares "t"'s object, so the manifest is valid; the header names only "t"."""
    data = safetensors_bytes({"t": THEIRS})
    manifest = Manifest.parse(stored(store, data, THEIRS, "safetensors"))
    manifest.tensors.append(manifest.tensors[0]._replace(name="u"))
    return recommitted(manifest)


def a_tensor_line_given_a_view(store: LocalStore) -> Manifest:
    """A safetensors tensor is always whole: clean never writes a view on its line."""
    manifest = Manifest.parse(
        stored(store, safetensors_bytes({"t": THEIRS}), THEIRS, "safetensors")
    )
    manifest.tensors = [manifest.tensors[0]._replace(offset=0, stride=(1,))]
    return recommitted(manifest)


HEADER_FIT_CASES = {
    "a-tensor-line-given-a-view": (
        a_tensor_line_given_a_view,
        "tensor 't' is not the manifest's tensor of that name",
    ),
    "a-tensor-left-in-the-skeleton": (
        a_tensor_left_in_the_skeleton,
        "the skeleton is not exactly a header",
    ),
    "a-tensor-the-header-lacks": (
        a_tensor_the_header_lacks,
        "the header names other tensors than the manifest",
    ),
}


@pytest.mark.parametrize("case", sorted(HEADER_FIT_CASES))
def test_reading_a_stored_safetensors_file_refuses_a_skeleton_that_is_not_its_manifests_header(
    store: LocalStore, case: str
) -> None:
    make, reason = HEADER_FIT_CASES[case]
    with pytest.raises(SafetensorsHeaderError) as caught:
        read_stored_safetensors(make(store), store, PATH)
    assert str(caught.value) == f"{PATH}: cannot rewrite the safetensors file: {reason}"


@pytest.mark.parametrize("dtype, shape", [("U8", (16,)), ("F32", (2, 2)), ("I32", (4,))])
def test_merge_driver_refuses_a_safetensors_side_whose_object_is_typed_otherwise_by_name(
    store: LocalStore, dtype: str, shape: tuple[int, ...]
) -> None:
    """Their tensor line and header agree (F32 [4]) and the object holds the right bytes,
    typed otherwise: the file cleaned again would name another object."""
    theirs = retyped(store, safetensors_bytes({"t": THEIRS}), dtype, shape)
    with pytest.raises(SafetensorsHeaderError) as caught:
        merge_with_theirs(store, theirs.render(), "safetensors")
    assert str(caught.value) == (
        f"{PATH}: cannot rewrite the safetensors file: tensor 't' is object "
        f"{theirs.splices[0].oid} of {dtype} {list(shape)}, the header makes it F32 [4]"
    )


def test_each_format_reader_refuses_a_manifest_of_the_other_format_by_name(
    store: LocalStore,
) -> None:
    # A merge of a file whose format changed between branches reads each side as the
    # format it claims; the other format's skeleton must be named, not half parsed.
    torch_zip = Manifest.parse(stored(store, checkpoint(), PAYLOAD.numpy().tobytes(), "torch-zip"))
    data = safetensors_bytes({"t": THEIRS})
    safetensors = Manifest.parse(stored(store, data, THEIRS, "safetensors"))
    with pytest.raises(SafetensorsHeaderError, match="it is torch-zip, not safetensors") as caught:
        read_stored_safetensors(torch_zip, store, PATH)
    assert str(caught.value).startswith(f"{PATH}: ")
    with pytest.raises(ArchiveLayoutError, match="it is safetensors, not a torch zip") as caught:
        read_stored_torch_zip(safetensors, store, PATH)
    assert str(caught.value).startswith(f"{PATH}: ")
