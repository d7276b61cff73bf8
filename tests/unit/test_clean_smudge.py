"""clean() and prepare_smudge() in process, against a store in a temp directory."""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import os
import random
import struct
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from attacks import RawEntry, raw_zip, torch_entries
from helpers import loose_object, mlp_checkpoint, sha256_bytes, within
from safetensors.torch import save as safetensors_save

from git_theta_filter import smudge
from git_theta_filter.clean import clean, collector_paused
from git_theta_filter.formats import layout
from git_theta_filter.formats.base import NotThisFormat
from git_theta_filter.formats.layout import payload_crc32, write_spliced
from git_theta_filter.formats.safetensors_file import MAX_HEADER_BYTES, parse_safetensors_header
from git_theta_filter.manifest import Manifest, ManifestError, Splice
from git_theta_filter.smudge import SmudgeVerificationError, prepare_smudge
from git_theta_filter.store.local import LocalStore, ObjectMissingError
from git_theta_filter.store.object_format import ObjectFormatError


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "theta")


class Warnings(list):
    def __call__(self, message: str) -> None:
        self.append(message)


def torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def do_clean(store: LocalStore, data: bytes, path: str = "model.pth") -> tuple[bytes, Warnings]:
    warnings = Warnings()
    return clean(io.BytesIO(data), store, path, warn=warnings), warnings


def do_smudge(store: LocalStore, manifest: bytes, path: str = "model.pth") -> bytes:
    out = bytearray()
    prepare_smudge(manifest, store, path).write(out.extend)
    return bytes(out)


def splice_ranges(manifest: Manifest) -> list[range]:
    return [range(s.offset, s.end) for s in manifest.splices]


@pytest.fixture(scope="module")
def checkpoint_bytes() -> bytes:
    return torch_bytes({"model": mlp_checkpoint(0, (8, 16, 4)), "epoch": 2, "loss": 0.5})


def test_torch_zip_round_trip(store: LocalStore, checkpoint_bytes: bytes) -> None:
    manifest_bytes, warnings = do_clean(store, checkpoint_bytes)
    manifest = Manifest.parse(manifest_bytes)
    assert warnings == []
    assert manifest.format == "torch-zip"
    assert (manifest.size, manifest.sha256) == (
        len(checkpoint_bytes),
        sha256_bytes(checkpoint_bytes),
    )
    assert {t.name for t in manifest.tensors} == {
        "model.0.weight",
        "model.0.bias",
        "model.2.weight",
        "model.2.bias",
    }
    assert manifest.metrics == {"epoch": 2, "loss": 0.5}
    assert do_smudge(store, manifest_bytes) == checkpoint_bytes
    # Each storage record's bytes are exactly the spliced payload, in the file.
    with zipfile.ZipFile(io.BytesIO(checkpoint_bytes)) as archive:
        records = {i.filename: i for i in archive.infolist() if "/data/" in i.filename}
    assert sorted(s.length for s in manifest.splices) == sorted(
        i.file_size for i in records.values()
    )


def test_collector_paused_pauses_the_collector_and_leaves_it_as_it_was() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled(), "collected meanwhile"
    assert gc.isenabled(), "the collector was left off"
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled(), "the collector was turned on"
    finally:
        gc.enable()


def test_clean_itself_leaves_the_collector_on_for_the_api_s_process(
    store: LocalStore, checkpoint_bytes: bytes
) -> None:
    """The Python API cleans inside a training process; only the filter pauses the
    collector (ThetaFilter, tests/unit/test_filter.py)."""
    seen = []

    class Reader(io.BytesIO):
        def readinto(self, buffer) -> int:  # type: ignore[override]
            seen.append(gc.isenabled())
            return super().readinto(buffer)

    clean(Reader(checkpoint_bytes), store)
    assert seen and all(seen)


def test_clean_is_deterministic_and_idempotent(store: LocalStore, checkpoint_bytes: bytes) -> None:
    first, _ = do_clean(store, checkpoint_bytes)
    second, _ = do_clean(store, checkpoint_bytes)
    assert first == second
    # clean(clean(x)) == clean(x): a manifest passes through unchanged, with no warning.
    again, warnings = do_clean(store, first)
    assert again == first
    assert warnings == []


def test_clean_of_smudge_is_the_manifest(store: LocalStore, checkpoint_bytes: bytes) -> None:
    manifest, _ = do_clean(store, checkpoint_bytes)
    rebuilt = do_smudge(store, manifest)
    assert do_clean(store, rebuilt)[0] == manifest


def test_a_broken_manifest_is_stored_opaque_not_passed_through(
    store: LocalStore, checkpoint_bytes: bytes
) -> None:
    manifest, _ = do_clean(store, checkpoint_bytes)
    broken = manifest.replace(b"format torch-zip", b"format torch-zap")
    out, warnings = do_clean(store, broken)
    parsed = Manifest.parse(out)
    assert parsed.format == "opaque" and parsed.size == len(broken)
    assert (
        len(warnings) == 1
        and warnings[0]
        == "model.pth: looks like a manifest but is not a valid one; stored as one opaque object"
    )
    assert do_smudge(store, out) == broken


def test_safetensors_round_trip(store: LocalStore) -> None:
    tensors = {"b": torch.arange(6, dtype=torch.int64), "a": torch.ones(2, 3, dtype=torch.bfloat16)}
    data = safetensors_save(tensors, metadata={"format": "pt"})
    manifest_bytes, warnings = do_clean(store, data, "w.safetensors")
    manifest = Manifest.parse(manifest_bytes)
    assert warnings == []
    assert manifest.format == "safetensors"
    assert {(t.name, t.dtype, t.shape) for t in manifest.tensors} == {
        ("a", "BF16", (2, 3)),
        ("b", "I64", (6,)),
    }
    assert do_smudge(store, manifest_bytes) == data


@pytest.mark.parametrize(
    "header, data, reason",
    [
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 12,
            "bytes after the last tensor",
        ),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
            b"\0" * 12,
            "data_offsets leave a gap or overlap",
        ),
        (
            {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            b"\0" * 8,
            "data_offsets disagree with dtype and shape",
        ),
        (
            {"a": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 2]}},
            b"\0" * 2,
            "dtype 'Q9' is not supported",
        ),
        ({"__metadata__": {"k": 1}}, b"", "__metadata__ must map strings to strings"),
        (
            {"": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 8,
            "a tensor with an empty name",
        ),
    ],
)
def test_broken_safetensors_is_stored_opaque(
    store: LocalStore, header: dict, data: bytes, reason: str
) -> None:
    body = json.dumps(header).encode()
    raw = struct.pack("<Q", len(body)) + body + data
    out, warnings = do_clean(store, raw, "w.safetensors")
    assert Manifest.parse(out).format == "opaque"
    assert (
        len(warnings) == 1
        and reason in warnings[0]
        and "stored as one opaque object" in warnings[0]
    )
    assert do_smudge(store, out) == raw


def test_a_header_length_over_the_limit_is_named_and_the_file_gets_its_opaque_manifest(
    store: LocalStore,
) -> None:
    """A length followed by "{" is tried as safetensors whatever its size, so the warning
    says what is wrong; the manifest is the opaque one of these bytes, as it was when such
    a file was not tried at all."""
    data = struct.pack("<Q", MAX_HEADER_BYTES + 1) + b'{"a": 1}'
    out, warnings = do_clean(store, data, "w.safetensors")
    assert warnings == [
        f"w.safetensors: safetensors header of {MAX_HEADER_BYTES + 1} bytes is over the limit; "
        "stored as one opaque object"
    ]
    opaque = Manifest(
        "opaque",
        len(data),
        sha256_bytes(data),
        store.write_bytes(b""),
        splices=[Splice(0, len(data), store.write_bytes(data))],
    )
    assert out == opaque.render()
    assert do_smudge(store, out) == data


def test_a_header_over_the_limit_is_refused_before_it_is_parsed() -> None:
    # Valid JSON ({} and spaces): only its length is wrong.
    header = b"{}" + b" " * (MAX_HEADER_BYTES - 1)
    with pytest.raises(
        NotThisFormat, match=f"safetensors header of {MAX_HEADER_BYTES + 1} bytes is over"
    ):
        parse_safetensors_header(header)


def test_duplicate_safetensors_keys_are_stored_opaque(store: LocalStore) -> None:
    body = (
        b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
        b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    )
    raw = struct.pack("<Q", len(body)) + body + b"x"
    out, warnings = do_clean(store, raw)
    assert Manifest.parse(out).format == "opaque"
    assert "safetensors header repeats a key" in warnings[0]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"x",
        b"hello world\n",
        random.Random(5000).randbytes(5000),
        b"PK\x03\x04" + b"\0" * 40,
        b"\x80\x02}q\x00.",
    ],
)
def test_opaque_round_trip(store: LocalStore, data: bytes) -> None:
    out, warnings = do_clean(store, data, "f.bin")
    manifest = Manifest.parse(out)
    assert manifest.format == "opaque"
    assert manifest.tensors == [] and manifest.metrics == {}
    assert (manifest.size, manifest.sha256) == (len(data), sha256_bytes(data))
    assert (
        len(warnings) == 1
        and warnings[0].startswith("f.bin: ")
        and warnings[0].endswith("stored as one opaque object")
    )
    assert do_smudge(store, out, "f.bin") == data
    if data:
        assert [(s.offset, s.length) for s in manifest.splices] == [(0, len(data))]


def data_pkl_second(entries: list[RawEntry]) -> bytes:
    return raw_zip([entries[1], entries[0], *entries[2:]])


def a_zip64_size_without_its_extra_field(entries: list[RawEntry]) -> bytes:
    """``.format_version``'s local header says its size is in a zip64 extra field it lacks
    (the record has no data descriptor, so that header is the only size clean reads)."""
    data = bytearray(raw_zip(entries))
    # raw_zip's local headers are 30 bytes and the name, with no extra field.
    second = 30 + len(entries[0].name) + len(entries[0].data)
    struct.pack_into("<I", data, second + 18, 0xFFFFFFFF)  # its compressed size
    return bytes(data)


def a_torchscript_record(entries: list[RawEntry]) -> bytes:
    return raw_zip([entries[0], RawEntry(b"archive/constants.pkl", b"\x80\x02)."), *entries[1:]])


def a_storage_without_its_record(entries: list[RawEntry]) -> bytes:
    return raw_zip([entry for entry in entries if entry.name != b"archive/data/0"])


def bytes_before_the_central_directory(entries: list[RawEntry]) -> bytes:
    data = raw_zip(entries)
    central = data.index(b"PK\x01\x02")
    return data[:central] + b"JUNK" + data[central:]


# Each breaks one rule of a torch zip that zipfile itself does not check.
BROKEN_TORCH_ZIPS = {
    "data-pkl-second": (data_pkl_second, "the first zip record is not data.pkl"),
    "a-zip64-size-without-its-extra-field": (
        a_zip64_size_without_its_extra_field,
        "zip entry 'archive/.format_version' lacks its zip64 sizes",
    ),
    "a-torchscript-record": (a_torchscript_record, "a TorchScript archive"),
    "a-storage-without-its-record": (
        a_storage_without_its_record,
        "storage '0' of tensor 't' has no data record",
    ),
    "bytes-before-the-central-directory": (
        bytes_before_the_central_directory,
        "unexpected bytes at offset",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_TORCH_ZIPS))
def test_a_zip_that_breaks_a_torch_zip_rule_is_stored_opaque_naming_the_rule(
    store: LocalStore, case: str
) -> None:
    breaks, reason = BROKEN_TORCH_ZIPS[case]
    checkpoint = torch_bytes({"t": torch.arange(4.0)})
    entries = [RawEntry(name.encode(), data) for name, data in torch_entries(checkpoint)]
    # The records written again as they are (no descriptors, no padding) make a torch zip:
    # the one rule broken is what makes the file opaque.
    assert Manifest.parse(do_clean(store, raw_zip(entries))[0]).format == "torch-zip"
    data = breaks(entries)
    out, warnings = do_clean(store, data)
    assert Manifest.parse(out).format == "opaque"
    assert len(warnings) == 1 and reason in warnings[0], warnings
    assert do_smudge(store, out) == data


def test_a_file_of_neither_format_is_stored_opaque_saying_so(store: LocalStore) -> None:
    # Not tried as safetensors: what is taken for its header length is not followed by "{".
    data = b"epoch,loss\n1,0.5\n2,0.25\n"
    out, warnings = do_clean(store, data)
    assert Manifest.parse(out).format == "opaque"
    assert len(warnings) == 1, warnings
    assert "neither a torch zip archive nor a safetensors file" in warnings[0]
    assert do_smudge(store, out) == data


@pytest.mark.parametrize("change", ["name", "size"])
def test_a_central_directory_that_disagrees_with_the_records_is_stored_opaque(
    store: LocalStore, checkpoint_bytes: bytes, change: str
) -> None:
    """A central directory that zip_directory.py reads without fault (each entry points at
    a local header, in order) but that names another record, or another size for one:
    only the comparison with the records clean read tells."""
    central = checkpoint_bytes.index(b"PK\x01\x02")
    head, directory = checkpoint_bytes[:central], bytearray(checkpoint_bytes[central:])
    if change == "name":
        at = directory.index(b"/data/0") + len("/data/")
        directory[at : at + 1] = b"X"
    else:  # the last record one byte shorter, in both of its sizes
        last = directory.rindex(b"PK\x01\x02")
        for field in (last + 20, last + 24):
            size = int.from_bytes(directory[field : field + 4], "little")
            directory[field : field + 4] = (size - 1).to_bytes(4, "little")
    data = head + bytes(directory)
    out, warnings = do_clean(store, data)
    assert Manifest.parse(out).format == "opaque"
    assert len(warnings) == 1 and "the zip central directory does not match" in warnings[0]
    assert do_smudge(store, out) == data


def test_truncation_outside_payloads_loses_no_byte(
    store: LocalStore, checkpoint_bytes: bytes
) -> None:
    """A file cut inside a header or the central directory is stored opaque and comes back whole."""
    full = Manifest.parse(do_clean(store, checkpoint_bytes)[0])
    inside_payload = {i for r in splice_ranges(full) for i in range(r.start + 1, r.stop)}
    cuts = [n for n in range(1, len(checkpoint_bytes), 13) if n not in inside_payload]
    assert len(cuts) > 50
    for n in cuts:
        data = checkpoint_bytes[:n]
        out, warnings = do_clean(store, data)
        assert Manifest.parse(out).format == "opaque", n
        assert len(warnings) == 1, n
        assert do_smudge(store, out) == data, f"cut at {n}: rebuilt file differs"


def test_truncation_inside_a_storage_payload_loses_no_byte(
    store: LocalStore, checkpoint_bytes: bytes
) -> None:
    full = Manifest.parse(do_clean(store, checkpoint_bytes)[0])
    for splice in full.splices:
        for fraction in (1, 2, 3):
            if not splice.length:
                continue
            data = checkpoint_bytes[: splice.offset + splice.length * fraction // 4 + 1]
            out, warnings = do_clean(store, data)
            assert Manifest.parse(out).format == "opaque"
            assert len(warnings) == 1 and "into a tensor" in warnings[0]
            assert do_smudge(store, out) == data, f"cut inside the payload at {splice.offset}"


def test_smudge_passes_non_manifest_content_through(store: LocalStore) -> None:
    assert (
        do_smudge(store, b"committed before it was tracked\n")
        == b"committed before it was tracked\n"
    )


def test_smudge_with_a_missing_object_fails_before_any_output(
    store: LocalStore, checkpoint_bytes: bytes
) -> None:
    manifest_bytes, _ = do_clean(store, checkpoint_bytes)
    manifest = Manifest.parse(manifest_bytes)
    victim = manifest.splices[1].oid
    path = loose_object(store, victim)
    path.unlink()
    with pytest.raises(ObjectMissingError) as info:
        prepare_smudge(manifest_bytes, store, "models/model.pth")
    assert info.value.oid == victim and info.value.path == "models/model.pth"
    assert (
        str(info.value)
        == f"models/model.pth: tensor object {victim} is missing from the local store"
    )
    assert "git theta fetch" in info.value.hint


def test_smudge_detects_a_corrupt_payload_by_the_whole_file_hash(
    store: LocalStore, checkpoint_bytes: bytes
) -> None:
    manifest_bytes, _ = do_clean(store, checkpoint_bytes)
    manifest = Manifest.parse(manifest_bytes)
    path = loose_object(store, manifest.splices[0].oid)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, so the header still checks out
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    plan = prepare_smudge(manifest_bytes, store, "model.pth")
    with pytest.raises(SmudgeVerificationError) as info:
        plan.write(lambda chunk: None)
    assert info.value.expected == manifest.sha256
    assert info.value.got != manifest.sha256
    assert str(info.value).startswith(
        f"model.pth: rebuilt file hashes to {info.value.got}, the manifest says {manifest.sha256}"
    )


def test_smudge_refuses_an_object_of_the_wrong_length(
    store: LocalStore, checkpoint_bytes: bytes
) -> None:
    manifest_bytes, _ = do_clean(store, checkpoint_bytes)
    manifest = Manifest.parse(manifest_bytes)
    victim = manifest.splices[0]
    path = loose_object(store, victim.oid)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b"extra")
    with pytest.raises(ObjectFormatError) as info:
        prepare_smudge(manifest_bytes, store, "model.pth")
    assert info.value.oid == victim.oid


def test_smudge_refuses_a_hostile_manifest(store: LocalStore) -> None:
    hostile = (
        b"git-theta-manifest 1\nformat opaque\nsize 4\nsha256 "
        + b"0" * 64
        + b"\nskeleton ../../../../etc/passwd\n"
    )
    with pytest.raises(ManifestError, match="bad object id"):
        prepare_smudge(hostile, store, "model.pth")


class Trickle:
    """A pipe-like reader: each readinto returns a few bytes,
    sizes from a fixed pseudo-random cycle.
    """

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._sizes = [1, 7, 4096, 13, 65516, 3, 100_000, 511]
        self._calls = 0

    def readinto(self, buffer: memoryview) -> int:
        size = min(
            len(buffer), self._sizes[self._calls % len(self._sizes)], len(self._data) - self._pos
        )
        self._calls += 1
        buffer[:size] = self._data[self._pos : self._pos + size]
        self._pos += size
        return size


def test_large_storages_and_a_large_data_pkl_stream_in_any_chunking(store: LocalStore) -> None:
    """A storage bigger than the source's 1 MiB buffer, and a data.pkl bigger than the 64 KiB
    descriptor scan window, read through short reads as from a pipe."""
    torch.manual_seed(0)
    checkpoint = {"big": torch.randn(700, 500)}  # 1.4 MB
    checkpoint.update(
        {
            f"layers.{i}.attention.query_projection.weight": torch.full((2,), float(i))
            for i in range(800)
        }
    )
    data = torch_bytes(checkpoint)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.getinfo("archive/data.pkl").file_size > 64 << 10
    whole, warnings = do_clean(store, data)
    trickled = clean(Trickle(data), store, "model.pth", warn=warnings)
    assert warnings == []
    assert trickled == whole
    manifest = Manifest.parse(whole)
    assert manifest.format == "torch-zip" and len(manifest.tensors) == 801
    assert do_smudge(store, whole) == data


@pytest.mark.parametrize("cut", [9, 40, 62])
def test_truncated_safetensors_header_is_stored_opaque_whole(store: LocalStore, cut: int) -> None:
    data = safetensors_save({"w": torch.arange(8.0)})[:cut]  # 8 + 56 header bytes, then data
    out, warnings = do_clean(store, data, "w.safetensors")
    assert Manifest.parse(out).format == "opaque"
    assert len(warnings) == 1 and "stored as one opaque object" in warnings[0]
    assert do_smudge(store, out) == data


def test_smudge_reads_checked_pack_entries_without_looking_them_up_again(
    store: LocalStore, checkpoint_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest_bytes, _ = do_clean(store, checkpoint_bytes)
    manifest = Manifest.parse(manifest_bytes)
    loose = manifest.splices[0].oid
    loose_object(store, loose)
    plan = prepare_smudge(manifest_bytes, store, "model.pth")
    # Pack entries hold no file descriptor; a loose object would, so it is closed.
    assert set(plan.opened) == {s.oid for s in manifest.splices} - {loose}
    assert not any(stored.owns_file for stored in plan.opened.values())
    looked_up = []
    open_loose = store._open_loose
    monkeypatch.setattr(store, "_open_loose", lambda oid: looked_up.append(oid) or open_loose(oid))
    out = bytearray()
    plan.write(out.extend)
    assert bytes(out) == checkpoint_bytes
    assert looked_up == [loose]  # only the loose object is opened again
    assert plan.opened == {}


def test_smudge_keeps_a_bounded_number_of_objects_open(
    store: LocalStore, checkpoint_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smudge, "_MAX_KEPT_OPEN", 1)
    manifest_bytes, _ = do_clean(store, checkpoint_bytes)
    plan = prepare_smudge(manifest_bytes, store, "model.pth")
    assert len(plan.opened) == 1
    out = bytearray()
    plan.write(out.extend)
    assert bytes(out) == checkpoint_bytes


def test_an_opened_object_of_another_length_than_its_splice_is_refused(
    store: LocalStore, checkpoint_bytes: bytes
) -> None:
    manifest_bytes, _ = do_clean(store, checkpoint_bytes)
    splice = Manifest.parse(manifest_bytes).splices[0]
    stored = store.open_readable(splice.oid)
    wrong = Splice(0, splice.length + 1, splice.oid)
    with pytest.raises(ObjectFormatError, match="the manifest says"):
        write_spliced(b"", [wrong], store, lambda chunk: None, opened={splice.oid: stored})


def test_a_write_that_fails_fails_the_smudge_and_leaves_no_thread(
    store: LocalStore, checkpoint_bytes: bytes
) -> None:
    manifest_bytes, _ = do_clean(store, checkpoint_bytes)
    plan = prepare_smudge(manifest_bytes, store, "model.pth")
    calls = []

    def broken_pipe(chunk: memoryview) -> None:
        calls.append(len(chunk))
        raise BrokenPipeError("git went away")

    do_smudge(store, manifest_bytes)  # the worker pools are made on first use, and stay
    before = threading.active_count()
    with pytest.raises(BrokenPipeError, match="git went away"):
        plan.write(broken_pipe)
    assert calls == [calls[0]]  # nothing is written after the failure
    assert threading.active_count() == before


def test_smudge_hands_small_and_large_chunks_out_in_order(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of 64 bytes: the file's small objects are batched, its large ones sent as
    # they are, and the order must hold across both.
    monkeypatch.setattr(smudge, "_BATCH", 64)
    data = torch_bytes({f"t{i}": torch.full((i * 7 % 40 + 1,), float(i)) for i in range(30)})
    manifest_bytes, _ = do_clean(store, data)
    assert do_smudge(store, manifest_bytes) == data


def test_smudge_output_copies_borrowed_bytes_and_keeps_given_ones_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller may reuse a buffer it wrote from (__call__), not one it gave away (give);
    hashing and writing run on separate threads, and the order holds across both."""
    monkeypatch.setattr(smudge, "_BATCH", 64)
    received = bytearray()
    output = smudge._HashingOutput(lambda chunk: received.extend(chunk))
    expected = bytearray()
    buffer = bytearray(48)
    rng = random.Random(5)
    for step in range(200):
        size = rng.choice((1, 20, 31, 32, 48, 100, 300))
        chunk = bytes(rng.randrange(256) for _ in range(size))
        expected += chunk
        if step % 3 == 0 and size <= len(buffer):
            buffer[:size] = chunk
            output(memoryview(buffer)[:size])
            buffer[:size] = bytes(size)  # reused at once: the output must have copied it
        elif step % 3 == 1:
            output.give(chunk)
        else:
            output(chunk)
    output.close()
    assert bytes(received) == bytes(expected)
    assert output.written == len(expected)
    assert output.digest.hexdigest() == sha256_bytes(bytes(expected))


def test_small_pack_entries_are_read_with_their_neighbours_and_written_in_order(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = torch_bytes({f"t{i}": torch.full((i * 7 % 40 + 1,), float(i)) for i in range(30)})
    manifest_bytes, _ = do_clean(store, data)
    reads = []
    pread = os.pread

    def smudge_counting_reads() -> bytes:
        plan = prepare_smudge(manifest_bytes, store, "model.pth")
        out = bytearray()
        reads.clear()
        with monkeypatch.context() as patch:
            patch.setattr(os, "pread", lambda fd, n, at: reads.append(n) or pread(fd, n, at))
            plan.write(out.extend)
        return bytes(out)

    assert smudge_counting_reads() == data
    # The 30 entries lie side by side in the clean's pack: one read for all of them.
    assert len(reads) == 1
    # Batches of one object, several decoded ahead of the writer: the order holds.
    monkeypatch.setattr(layout, "_SMALL_BATCH", 1)
    assert smudge_counting_reads() == data
    assert len(reads) == 30


def test_a_small_object_that_fails_to_decode_fails_the_smudge_naming_it(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = torch_bytes({f"t{i}": torch.full((50,), float(i)) for i in range(20)})
    manifest_bytes, _ = do_clean(store, data)
    victim = Manifest.parse(manifest_bytes).splices[7].oid
    plan = prepare_smudge(manifest_bytes, store, "model.pth")
    stored = plan.opened[victim]
    fd, start, length = stored.region
    monkeypatch.setattr(
        type(stored),
        "region",
        property(
            lambda self: (
                (fd, start, length - 1) if self is stored else (self._fd, self._start, self._length)
            )
        ),
    )
    with pytest.raises(ObjectFormatError) as info:
        plan.write(lambda chunk: None)
    assert info.value.oid == victim


@pytest.mark.parametrize("batch", [1, 100, 1 << 20])
def test_runs_of_small_objects_broken_by_other_objects_rebuild_the_file(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    # Empty tensors, loose objects (not kept open, so not in a run) and a large one
    # (read by block) among the small pack entries; runs of one object, of a few, of all.
    monkeypatch.setattr(layout, "_SMALL_BATCH", batch)
    state = {f"t{i:02}": torch.full((i % 5 * 9,), float(i)) for i in range(24)}
    state["t07"] = torch.randn(300_000, generator=torch.Generator().manual_seed(3))
    data = torch_bytes(state)
    manifest_bytes, _ = do_clean(store, data)
    splices = Manifest.parse(manifest_bytes).splices
    for splice in splices[2::5]:
        loose_object(store, splice.oid)
    assert do_smudge(store, manifest_bytes) == data


def test_a_file_over_the_skeleton_limit_is_stored_opaque_and_restored(
    store: LocalStore, checkpoint_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checkpoint's zip headers and data.pkl are some hundreds of bytes of skeleton.
    monkeypatch.setattr(layout, "MAX_SKELETON_BYTES", 100)
    out, warnings = do_clean(store, checkpoint_bytes)
    assert Manifest.parse(out).format == "opaque"
    assert warnings == [
        "model.pth: more than 100 bytes of non-tensor data; stored as one opaque object"
    ]
    assert do_smudge(store, out) == checkpoint_bytes


def test_a_manifest_whose_size_disagrees_with_its_skeleton_object_is_refused(
    store: LocalStore, checkpoint_bytes: bytes
) -> None:
    # One byte more in `size` makes the skeleton one byte longer than the object holds.
    manifest = Manifest.parse(do_clean(store, checkpoint_bytes)[0])
    crafted = dataclasses.replace(manifest, size=manifest.size + 1).render()
    with pytest.raises(ObjectFormatError, match="the manifest says") as info:
        prepare_smudge(crafted, store, "model.pth")
    assert info.value.oid == manifest.skeleton


def test_a_looked_up_object_shorter_than_its_splice_says_is_refused(
    store: LocalStore, checkpoint_bytes: bytes
) -> None:
    # Not among the opened objects, so write_spliced looks it up itself.
    splice = Manifest.parse(do_clean(store, checkpoint_bytes)[0]).splices[0]
    wrong = Splice(0, splice.length - 4, splice.oid)
    with pytest.raises(ObjectFormatError, match="the manifest says") as info:
        write_spliced(b"", [wrong], store, lambda chunk: None)
    assert info.value.oid == splice.oid


@pytest.mark.parametrize(
    ("opener", "reads"),
    [
        # The spliced write of a smudge, and the CRC the torch zip writer takes of a
        # payload (a merge).
        ("open_object", lambda store, splice: write_spliced(b"", [splice], store, lambda _: None)),
        ("open_verified", lambda store, splice: payload_crc32(store, splice.oid)),
    ],
    ids=["write_spliced", "payload_crc32"],
)
def test_an_object_file_cut_short_while_it_is_read_fails_naming_it(
    store: LocalStore,
    checkpoint_bytes: bytes,
    monkeypatch: pytest.MonkeyPatch,
    opener: str,
    reads: Callable[[LocalStore, Splice], object],
) -> None:
    # Its size (and, verified, its hash) is checked on opening; another process (a gc,
    # a damaged disk) may still shorten it afterwards. The read must stop there, not
    # wait for bytes for ever.
    splices = Manifest.parse(do_clean(store, checkpoint_bytes)[0]).splices
    splice = max(splices, key=lambda s: s.length)
    path = loose_object(store, splice.oid)
    open_whole = getattr(store, opener)

    def open_then_cut(oid: str, *args: object, **kwargs: object) -> object:
        file, header = open_whole(oid, *args, **kwargs)
        os.truncate(path, header.data_offset + 8)
        return file, header

    monkeypatch.setattr(store, opener, open_then_cut)
    with pytest.raises(ObjectFormatError, match="payload ends early") as info:
        within(10, lambda: reads(store, splice))
    assert info.value.oid == splice.oid
