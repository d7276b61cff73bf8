"""Objects (docs/store.md): canonical single-tensor safetensors files in .git/theta/objects."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import sha256_bytes, sha256_file
from safetensors import safe_open
from safetensors.numpy import save as safetensors_numpy_save

from git_theta_filter.errors import ThetaError
from git_theta_filter.store.local import LocalStore, ObjectMissingError
from git_theta_filter.store.object_format import (
    MAX_OBJECT_HEADER,
    ObjectFormatError,
    encode_header,
    object_type_for,
    parse_header_bytes,
    read_header,
)

OID = "f" * 64


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "theta")


def test_header_is_canonical_and_padded_to_eight_bytes() -> None:
    header = encode_header("F32", (16, 8), 512)
    (length,) = struct.unpack_from("<Q", header)
    body = header[8:]
    assert len(body) == length and length % 8 == 0
    assert body.rstrip(b" ") == b'{"tensor":{"dtype":"F32","shape":[16,8],"data_offsets":[0,512]}}'
    assert parse_header_bytes(OID, header, len(header) + 512).nbytes == 512


@pytest.mark.parametrize(
    "dtype, shape",
    [("BF16", (3,)), ("I64", ()), ("BOOL", (2, 2)), ("U8", (0,)), ("F16", (1, 1, 5))],
)
def test_objects_are_readable_by_the_reference_safetensors_reader(
    store: LocalStore, dtype: str, shape: tuple[int, ...]
) -> None:
    itemsize = {"BF16": 2, "I64": 8, "BOOL": 1, "U8": 1, "F16": 2}[dtype]
    payload = bytes((i * 7) % 2 for i in range(int(np.prod(shape)) * itemsize))
    oid = store.write_bytes(payload, dtype, shape)
    path = store.object_path(oid)
    assert path == store.theta_dir / "objects" / oid[:2] / oid[2:4] / oid
    assert sha256_file(path) == oid
    with safe_open(str(path), framework="numpy") as f:
        assert list(f.keys()) == ["tensor"]
        assert f.get_slice("tensor").get_dtype() == dtype
        assert f.get_slice("tensor").get_shape() == list(shape)
    file, header = store.open_object(oid)
    with file:
        assert file.read() == payload
    assert (header.dtype, header.shape, header.nbytes) == (dtype, shape, len(payload))


def test_same_payload_same_type_same_oid_and_it_matches_safetensors_numpy(
    store: LocalStore,
) -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    oid = store.write_bytes(array.tobytes(), "F32", (3, 4))
    assert store.write_bytes(array.tobytes(), "F32", (3, 4)) == oid
    # Same bytes as another type or shape is another object.
    assert store.write_bytes(array.tobytes(), "F32", (12,)) != oid
    assert store.write_bytes(array.tobytes(), "I32", (3, 4)) != oid
    # The canonical object of one tensor is what safetensors itself writes for {"tensor": array}.
    assert sha256_bytes(safetensors_numpy_save({"tensor": array})) == oid


def test_objects_are_read_only_and_a_good_one_is_never_rewritten(store: LocalStore) -> None:
    oid = store.write_bytes(b"payload", "U8", (7,))
    path = store.object_path(oid)
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    before, content = path.stat(), path.read_bytes()
    assert store.write_bytes(b"payload", "U8", (7,)) == oid
    after = path.stat()
    # The same file, untouched but for its mtime: a dedup hit freshens it for gc.
    assert (after.st_ino, after.st_size, after.st_mode) == (
        before.st_ino,
        before.st_size,
        before.st_mode,
    )
    assert path.read_bytes() == content and after.st_mtime_ns >= before.st_mtime_ns
    assert list((store.theta_dir / "tmp").iterdir()) == []


@pytest.mark.parametrize("damage", ["payload", "truncated", "symlink", "fifo"])
def test_writing_an_object_again_replaces_a_damaged_copy_whole(
    store: LocalStore, tmp_path: Path, damage: str
) -> None:
    oid = store.write_bytes(b"payload", "U8", (7,))
    path = store.object_path(oid)
    good = path.read_bytes()
    path.unlink()
    if damage == "payload":
        path.write_bytes(good[:-1] + b"X")
    elif damage == "truncated":
        path.write_bytes(good[:-3])
    elif damage == "symlink":
        (tmp_path / "outside").write_bytes(good[:-1] + b"Y")
        path.symlink_to(tmp_path / "outside")
    else:
        os.mkfifo(path)
    planted = os.lstat(path)
    assert store.write_bytes(b"payload", "U8", (7,)) == oid
    assert not path.is_symlink() and path.read_bytes() == good
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    store.verify(oid)
    # The damaged file is kept for inspection, the outside file is untouched.
    assert os.lstat(store.theta_dir / "bad" / oid).st_ino == planted.st_ino
    if damage == "symlink":
        assert (tmp_path / "outside").read_bytes() == good[:-1] + b"Y"
    assert list((store.theta_dir / "tmp").iterdir()) == []


def test_verify_finds_a_corrupt_object(store: LocalStore) -> None:
    oid = store.write_bytes(b"abcdefgh", "U8", (8,))
    store.verify(oid)
    path = store.object_path(oid)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"X")
    with pytest.raises(ObjectFormatError) as info:
        store.verify(oid)
    assert info.value.oid == oid
    assert str(info.value) == f"object {oid} is corrupt: content hashes to {sha256_file(path)}"


def test_missing_object_error_names_oid_path_and_fix(store: LocalStore) -> None:
    with pytest.raises(ObjectMissingError) as info:
        store.open_object(OID, "models/a.pth")
    assert str(info.value) == f"models/a.pth: tensor object {OID} is missing from the local store"
    assert info.value.hint.startswith("run `git theta fetch`")
    assert store.has(OID) is False and store.size(OID) is None


@pytest.mark.parametrize(
    "read",
    [
        lambda store: store.open_readable(OID, "models/a.pth"),
        lambda store: store.check_readable(OID, "models/a.pth"),
        lambda store: list(store.open_all_readable([OID], "models/a.pth")),
    ],
    ids=["open_readable", "check_readable", "open_all_readable"],
)
def test_the_readers_that_check_delta_bases_name_a_missing_object_and_its_path(
    store: LocalStore, read: Callable[[LocalStore], object]
) -> None:
    # Smudge checks every object with these before it writes a byte: a missing one must be
    # the error that tells the user to fetch, not a crash on the absent object.
    with pytest.raises(ObjectMissingError) as info:
        read(store)
    assert (info.value.oid, info.value.path) == (OID, "models/a.pth")
    assert str(info.value) == f"models/a.pth: tensor object {OID} is missing from the local store"


def test_quarantine_of_an_object_that_is_not_here_is_a_missing_object_error(
    store: LocalStore,
) -> None:
    kept = store.write_bytes(b"payload", "U8", (7,))
    with pytest.raises(ObjectMissingError) as info:
        store.quarantine(OID)
    assert info.value.oid == OID
    # Nothing was moved out of the way, nor a quarantine made for nothing.
    assert list(store.iter_oids()) == [kept]
    assert not (store.theta_dir / "bad").exists()


@pytest.mark.parametrize("oid", ["../../../etc/passwd", "F" * 64, "f" * 63, "f" * 65, "g" * 64, ""])
def test_object_path_refuses_anything_but_an_oid(store: LocalStore, oid: str) -> None:
    with pytest.raises(ThetaError, match="invalid object id"):
        store.object_path(oid)


def test_iter_oids_lists_only_well_placed_objects(store: LocalStore) -> None:
    oids = {store.write_bytes(bytes([i]) * 3, "U8", (3,)) for i in range(5)}
    misplaced = store.objects_dir / "00" / "00" / ("ab" * 32)
    misplaced.parent.mkdir(parents=True)
    misplaced.write_bytes(b"")
    (store.objects_dir / oids.copy().pop()[:2] / "README").mkdir(parents=True, exist_ok=True)
    assert set(store.iter_oids()) == oids


def test_symlinked_object_is_refused(store: LocalStore, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(encode_header("U8", (1,), 1) + b"x")
    oid = sha256_file(target)
    path = store.object_path(oid)
    path.parent.mkdir(parents=True)
    path.symlink_to(target)
    with pytest.raises(ObjectFormatError, match="is a symbolic link"):
        store.open_object(oid)


def header_with(entry: object, payload: int = 4) -> tuple[bytes, int]:
    body = json.dumps(entry).encode()
    return struct.pack("<Q", len(body)) + body, 8 + len(body) + payload


VALID_ENTRY = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}


@pytest.mark.parametrize(
    "prefix_and_size, reason",
    [
        ((b"\x01\x00", 2), "shorter than a safetensors header"),
        (
            (struct.pack("<Q", MAX_OBJECT_HEADER + 1), 100),
            "header of 65537 bytes is over the 65536-byte limit",
        ),
        ((struct.pack("<Q", 64) + b"{}", 80), "header runs past the end of the file"),
        (header_with([1, 2]), "header must hold exactly one entry named 'tensor'"),
        ((struct.pack("<Q", 4) + b"{{{{", 12), "header is not JSON"),
        (
            header_with({"tensor": VALID_ENTRY, "__metadata__": {}}),
            "header must hold exactly one entry named 'tensor'",
        ),
        (header_with({"weight": VALID_ENTRY}), "header must hold exactly one entry named 'tensor'"),
        (
            header_with({"tensor": {**VALID_ENTRY, "extra": 1}}),
            "tensor entry must have dtype, shape and data_offsets",
        ),
        (header_with({"tensor": {**VALID_ENTRY, "dtype": "C128"}}), "unknown dtype 'C128'"),
        (
            header_with({"tensor": {**VALID_ENTRY, "shape": [-1]}}),
            "shape must be a list of at most 64 non-negative integers",
        ),
        (
            header_with({"tensor": {**VALID_ENTRY, "shape": [True]}}),
            "shape must be a list of at most 64 non-negative integers",
        ),
        (
            header_with({"tensor": {**VALID_ENTRY, "data_offsets": [0]}}),
            "data_offsets must be two integers",
        ),
        (
            header_with({"tensor": {**VALID_ENTRY, "data_offsets": [4, 8]}}),
            "data_offsets [4, 8] disagree with F32[1] (4 bytes)",
        ),
        (header_with({"tensor": VALID_ENTRY}, payload=5), "header says"),
        # Each of these escaped as a ValueError, RecursionError or TypeError before.
        (
            (struct.pack("<Q", 5010) + b'{"tensor":' + b"9" * 5000, 5018),
            "header holds an integer of more than 20 digits",
        ),
        ((struct.pack("<Q", 60_000) + b"[" * 60_000, 60_008), "header is not JSON"),
        (header_with({"tensor": {**VALID_ENTRY, "dtype": ["F32"]}}), "unknown dtype ['F32']"),
    ],
)
def test_hostile_object_headers_are_refused(
    prefix_and_size: tuple[bytes, int], reason: str
) -> None:
    prefix, size = prefix_and_size
    with pytest.raises(ObjectFormatError) as info:
        parse_header_bytes(OID, prefix, size)
    assert info.value.oid == OID
    assert reason in str(info.value)
    assert str(info.value).startswith(f"object {OID} is corrupt: ")


class CountingStream(io.RawIOBase):
    """Endless bytes after a given prefix; counts what is asked for and what is read."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.asked = 0
        self.given = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.asked += size
        data = self.prefix[self.given : self.given + size]
        data += b" " * (size - len(data))
        self.given += len(data)
        return data


@pytest.mark.parametrize("length", [MAX_OBJECT_HEADER + 1, 1 << 40, (1 << 64) - 1])
def test_read_header_refuses_a_header_length_over_the_limit_before_reading_it(
    length: int,
) -> None:
    stream = CountingStream(struct.pack("<Q", length))
    with pytest.raises(ObjectFormatError, match=f"header of {length} bytes is over the"):
        read_header(OID, stream, 1 << 50)
    assert (stream.asked, stream.given) == (8, 8)


def test_read_header_reads_exactly_a_header_within_the_limit() -> None:
    header = encode_header("F32", (2,), 8)
    stream = CountingStream(header + b"payload!")
    assert read_header(OID, stream, len(header) + 8).data_offset == len(header)
    assert stream.given == len(header)


def test_types_without_a_safetensors_dtype_are_stored_as_bytes() -> None:
    assert object_type_for("F32", (2, 3), 24) == ("F32", (2, 3))
    assert object_type_for("BF16", (4,), 8) == ("BF16", (4,))
    assert object_type_for("C128", (2,), 32) == ("U8", (32,))
    assert object_type_for("QI8", (3,), 3) == ("U8", (3,))
    with pytest.raises(ValueError, match="C128 cannot be an object dtype"):
        encode_header("C128", (1,), 16)
    with pytest.raises(ValueError, match="does not occupy"):
        encode_header("F32", (2,), 7)


@pytest.mark.parametrize("stray", ["objects/.DS_Store", "objects/ab/notes.txt"])
def test_iter_oids_skips_stray_files(store: LocalStore, stray: str) -> None:
    oid = store.write_bytes(b"payload", "U8", (7,))
    path = store.theta_dir / stray
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an object")
    assert list(store.iter_oids()) == [oid]


def test_a_header_validated_before_is_still_checked_against_the_file_size() -> None:
    header = encode_header("F32", (4,), 16)
    assert parse_header_bytes(OID, header, len(header) + 16).nbytes == 16
    # The second parse finds the header among those already validated: the size
    # check must not be skipped with the JSON parse.
    with pytest.raises(ObjectFormatError, match="header says"):
        parse_header_bytes(OID, header, len(header) + 15)
