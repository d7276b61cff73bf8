"""Git LFS pointers as git-lfs's docs/spec.md writes them; anything else is no pointer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from git_theta_filter.errors import ThetaError
from git_theta_filter.lfs_pointer import (
    LfsObjectCorruptError,
    LfsObjectMissingError,
    LfsPointer,
    LfsStorage,
    check_object,
    parse_lfs_pointer,
)

OID = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393"
CANONICAL = (
    b"version https://git-lfs.github.com/spec/v1\noid sha256:" + OID.encode() + b"\nsize 12345\n"
)


def test_parse_lfs_pointer_reads_the_canonical_form() -> None:
    assert parse_lfs_pointer(CANONICAL) == LfsPointer(OID, 12345)
    assert LfsPointer(OID, 12345).render() == CANONICAL


@pytest.mark.parametrize(
    "data",
    [
        CANONICAL.replace(OID.encode(), b"../../../../etc/passwd" + b"0" * 42),  # a path
        CANONICAL.replace(OID.encode(), OID.upper().encode()),  # not lowercase
        CANONICAL.replace(OID.encode(), OID[:-1].encode()),  # 63 digits
        CANONICAL.replace(b"size 12345", b"size 012345"),  # a leading zero
        CANONICAL.replace(b"size 12345", b"size -1"),
        CANONICAL.replace(b"size 12345", b"size 99999999999999999999"),  # over 2**63
        CANONICAL.rstrip(b"\n"),  # no final newline
        CANONICAL + b"ext-0-foo sha256:" + OID.encode() + b"\n",  # extensions: unsupported
        CANONICAL.replace(b"sha256:", b"sha1:"),
        CANONICAL + b" " * 1024,  # over 1024 bytes
        b"version https://git-lfs.github.com/spec/v1\nsize 12345\noid sha256:" + OID.encode(),
        b"PK\x03\x04" + CANONICAL,
    ],
)
def test_parse_lfs_pointer_refuses_anything_else(data: bytes) -> None:
    assert parse_lfs_pointer(data) is None


def test_lfs_storage_streams_an_object_and_checks_it(tmp_path: Path) -> None:
    content = b"model bytes" * 1000
    pointer = LfsPointer(hashlib.sha256(content).hexdigest(), len(content))
    storage = LfsStorage(tmp_path / "lfs")
    storage.store(pointer, lambda file: file.write(content))
    assert storage.has(pointer)
    assert storage.object_path(pointer.oid).read_bytes() == content
    out = bytearray()
    storage.copy_verified(pointer, "model.pth", out.extend)
    assert bytes(out) == content


def test_lfs_storage_refuses_an_object_that_does_not_match_its_pointer(tmp_path: Path) -> None:
    content = b"model bytes" * 1000
    pointer = LfsPointer(hashlib.sha256(content).hexdigest(), len(content))
    storage = LfsStorage(tmp_path / "lfs")
    path = storage.object_path(pointer.oid)
    path.parent.mkdir(parents=True)
    path.write_bytes(content[:-1] + b"X")
    with pytest.raises(LfsObjectCorruptError, match="content hashes to"):
        storage.copy_verified(pointer, "model.pth", lambda chunk: None)
    path.write_bytes(content[:-1])
    with pytest.raises(LfsObjectCorruptError, match="10999 bytes, the pointer says 11000"):
        storage.copy_verified(pointer, "model.pth", lambda chunk: None)


def test_check_object_names_a_size_mismatch_even_when_the_hash_matches() -> None:
    with pytest.raises(LfsObjectCorruptError) as raised:
        check_object(LfsPointer(OID, 5), "model.pth", 6, OID)
    assert str(raised.value) == (
        f"model.pth: the git-lfs object sha256:{OID} in .git/lfs/objects is corrupt "
        "(6 bytes, the pointer says 5)"
    )


def test_lfs_storage_names_a_missing_object_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(LfsObjectMissingError) as raised:
        LfsStorage(tmp_path / "lfs").open(LfsPointer(OID, 1), "model.pth", "abc1234")
    assert str(raised.value) == (
        f"model.pth at abc1234 is a git-lfs pointer, and its object sha256:{OID} is not in "
        ".git/lfs/objects"
    )
    assert raised.value.hint is not None and "git lfs fetch --all" in raised.value.hint


def test_lfs_storage_honours_lfs_storage_relative_to_the_git_dir(tmp_path: Path) -> None:
    git_dir, common = tmp_path / "wt", tmp_path / "common"
    assert LfsStorage.for_git_dirs(git_dir, common, None).root == common / "lfs"
    assert LfsStorage.for_git_dirs(git_dir, common, "big").root == git_dir / "big"
    assert LfsStorage.for_git_dirs(git_dir, common, "/abs/lfs").root == Path("/abs/lfs")


@pytest.mark.parametrize("oid", ["../../config", OID.upper(), OID + "0", ""])
def test_lfs_storage_object_path_refuses_what_is_no_oid(tmp_path: Path, oid: str) -> None:
    with pytest.raises(ThetaError, match="invalid git-lfs object id"):
        LfsStorage(tmp_path).object_path(oid)


def test_prepare_smudge_of_a_pointer_without_its_object_fails_before_any_output(
    tmp_path: Path,
) -> None:
    """As for a missing tensor object: the file fails before git gets a first byte."""
    from git_theta_filter.smudge import prepare_smudge
    from git_theta_filter.store.local import LocalStore

    store, storage = LocalStore(tmp_path / "theta"), LfsStorage(tmp_path / "lfs")
    with pytest.raises(LfsObjectMissingError):
        prepare_smudge(CANONICAL, store, "model.pth", storage)
    # Without git-lfs storage to read from (the merge driver, say), a pointer passes through.
    assert prepare_smudge(CANONICAL, store, "model.pth").passthrough == CANONICAL
