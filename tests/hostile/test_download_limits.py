"""Downloads are cut at the object's size, from every kind of store (issue 10, class 5).

The manifest records each object's payload length, and remote stores hold
canonical objects, so an object can be no longer than its 8-byte header
length, its header and that payload. A store that sends more (a directory
store with a longer file, an S3 object with bytes appended, an LFS server
that pads its answer), or a directory store whose object file is a FIFO, a
device or a symbolic link, is cut off as soon as it passes that size; the
temp file is deleted and the error names the store and the object.
"""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from helpers import within
from lfs_server import LfsServer

from git_theta_filter.lfs_pointer import LfsObjectCorruptError, LfsPointer, LfsStorage
from git_theta_filter.progress import QuietProgress
from git_theta_filter.store.directory import DirectoryStore, StoreFileRefusedError
from git_theta_filter.store.lfs import LfsSettings, LfsStore
from git_theta_filter.store.lfs_endpoint import endpoint_from_lfs_url
from git_theta_filter.store.local import LocalStore
from git_theta_filter.store.s3 import S3Store
from git_theta_filter.store.sink import DownloadTooLargeError
from git_theta_filter.store.transfer import TransferFailedError, download, relay, upload

PAYLOAD = 4096
MIB = 1 << 20


@pytest.fixture
def source(tmp_path: Path) -> tuple[LocalStore, str, bytes]:
    """A clone's store with one object of a 4 KiB payload; its oid and canonical bytes."""
    store = LocalStore(tmp_path / "source" / "theta")
    oid = store.write_bytes(os.urandom(PAYLOAD))
    with store.canonical_file(oid) as canonical:
        return store, oid, canonical.read_bytes()


def failed_download(remote: Any, oid: str, tmp_path: Path) -> tuple[Exception, LocalStore]:
    """Download ``oid`` (a payload of 4 KiB, as its manifest says) into a fresh store; the
    error it failed with, after checking that nothing of it was kept."""
    fresh = LocalStore(tmp_path / "fresh" / "theta")
    with pytest.raises(TransferFailedError) as caught:
        within(
            60, lambda: download(fresh, remote, {oid: PAYLOAD}, workers=1, progress=QuietProgress)
        )
    assert not fresh.has(oid)
    assert list(fresh.tmp_dir.iterdir()) == [], "the temp file was left behind"
    error = caught.value.failures[oid]
    assert f"object {oid} in {remote.url}: " in str(error)
    return error, fresh


def assert_cut_off(error: Exception, canonical: bytes) -> None:
    assert isinstance(error, DownloadTooLargeError), error
    assert error.limit == len(canonical), "cut off at the object's own size"
    assert "sent more than" in str(error)


# -- a directory store ---------------------------------------------------------------------------


def directory_store(tmp_path: Path) -> DirectoryStore:
    (tmp_path / "shared").mkdir(exist_ok=True)
    return DirectoryStore(tmp_path / "shared" / "objects")


def store_file(store: DirectoryStore, oid: str) -> Path:
    path = store.root / oid[:2] / oid[2:4] / oid
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("extra", [1, 16 * MIB], ids=["one-byte-more", "16-MiB-more"])
def test_download_from_a_directory_store_is_cut_at_the_objects_size(
    source, tmp_path: Path, extra: int
) -> None:
    """One byte past the object is already refused: the limit is exact, not a margin."""
    _, oid, canonical = source
    store = directory_store(tmp_path)
    with open(store_file(store, oid), "wb") as file:
        file.write(canonical)
        file.truncate(len(canonical) + extra)
    error, _ = failed_download(store, oid, tmp_path)
    assert_cut_off(error, canonical)


def test_download_from_a_directory_store_refuses_a_fifo_without_blocking(
    source, tmp_path: Path
) -> None:
    _, oid, _ = source
    store = directory_store(tmp_path)
    os.mkfifo(store_file(store, oid))
    error, _ = failed_download(store, oid, tmp_path)
    assert isinstance(error, StoreFileRefusedError), error
    assert "is a FIFO, not a regular file; refused" in str(error)


def test_download_from_a_directory_store_refuses_a_device(source, tmp_path: Path) -> None:
    """/dev/zero never ends; the store file is refused before a byte is read."""
    _, oid, _ = source
    store = directory_store(tmp_path)
    try:
        os.mknod(store_file(store, oid), stat.S_IFCHR | 0o444, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("making a device needs root")
    error, _ = failed_download(store, oid, tmp_path)
    assert isinstance(error, StoreFileRefusedError), error
    assert "is a device, socket or directory, not a regular file" in str(error)


@pytest.mark.parametrize("link", ["object", "directory", "endless"])
def test_download_from_a_directory_store_never_follows_a_symlink(
    source, tmp_path: Path, link: str
) -> None:
    """Not even to a good copy of the object: a link can point anywhere (another user's
    files, /dev/zero); a link on the way to the object is refused too."""
    _, oid, canonical = source
    store = directory_store(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / oid).write_bytes(canonical)
    if link == "object":
        store_file(store, oid).symlink_to(elsewhere / oid)
        message = "is a symbolic link; refused"
    elif link == "endless":
        store_file(store, oid).symlink_to("/dev/zero")
        message = "is a symbolic link; refused"
    else:
        (store.root / oid[:2]).mkdir(parents=True)
        (store.root / oid[:2] / oid[2:4]).symlink_to(elsewhere, target_is_directory=True)
        message = f"its directory {oid[2:4]} is a symbolic link; refused"
    error, _ = failed_download(store, oid, tmp_path)
    assert isinstance(error, StoreFileRefusedError), error
    assert message in str(error)


def test_relay_between_stores_is_cut_at_the_objects_size(source, tmp_path: Path) -> None:
    """A push that copies objects from another remote's store goes through the same sink."""
    local, oid, canonical = source
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    from_store = DirectoryStore(tmp_path / "a" / "objects")
    to_store = DirectoryStore(tmp_path / "b" / "objects")
    store_file(from_store, oid).write_bytes(canonical + b"\0")
    with pytest.raises(TransferFailedError) as caught:
        relay(local, from_store, to_store, {oid: PAYLOAD}, workers=1, progress=QuietProgress)
    assert_cut_off(caught.value.failures[oid], canonical)
    assert not to_store.has(oid)
    assert list(local.tmp_dir.iterdir()) == []


# -- an S3 store (moto's server) -----------------------------------------------------------------


def test_download_from_s3_is_cut_at_the_objects_size(
    source, tmp_path: Path, s3_endpoint: str, monkeypatch
) -> None:
    _, oid, canonical = source
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    bucket = f"limits-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=bucket)
    key = f"models/{oid[:2]}/{oid[2:4]}/{oid}"
    client.put_object(Bucket=bucket, Key=key, Body=canonical + bytes(2 * MIB))
    store = S3Store.from_url(f"s3://{bucket}/models", endpoint_url=s3_endpoint, workers=1)
    error, _ = failed_download(store, oid, tmp_path)
    assert_cut_off(error, canonical)


# -- a Git LFS store (giftless) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lfs_server(tmp_path_factory):
    server = LfsServer(tmp_path_factory.mktemp("lfs-limits")).start()
    yield server
    server.stop()


def test_download_from_an_lfs_server_is_cut_at_the_objects_size(
    source, tmp_path: Path, lfs_server: LfsServer
) -> None:
    local, oid, canonical = source
    lfs_server.reset()
    url = lfs_server.endpoint(f"limits-{uuid.uuid4().hex[:8]}")
    store = LfsStore(endpoint_from_lfs_url(url), settings=LfsSettings(max_retries=0))
    upload(local, store, [oid], workers=1, progress=QuietProgress)
    lfs_server.control(extra_bytes=MIB)  # every download: the object, then a MiB more
    fresh_store = LfsStore(endpoint_from_lfs_url(url), settings=LfsSettings(max_retries=0))
    fresh = LocalStore(tmp_path / "fresh" / "theta")
    with pytest.raises(TransferFailedError) as caught:
        download(
            fresh,
            fresh_store,
            {oid: PAYLOAD},
            workers=1,
            progress=QuietProgress,
            object_sizes={oid: (len(canonical),)},
        )
    error = caught.value.failures[oid]
    assert f"object {oid} in {fresh_store.url}: " in str(error)
    assert_cut_off(error, canonical)
    assert not fresh.has(oid) and list(fresh.tmp_dir.iterdir()) == []


# -- git-lfs's local objects (versions from before theta) ----------------------------------------


@pytest.mark.parametrize("planted", ["longer", "fifo", "endless-symlink"])
def test_a_git_lfs_object_is_refused_unless_a_regular_file_of_the_pointers_size(
    tmp_path: Path, planted: str
) -> None:
    """git-lfs downloaded these; one that is longer, a FIFO or a link to /dev/zero is refused
    before a byte is read (a FIFO blocked, /dev/zero never ended, a longer file was read whole)."""
    data = os.urandom(PAYLOAD)
    pointer = LfsPointer(hashlib.sha256(data).hexdigest(), len(data))
    storage = LfsStorage(tmp_path / "lfs")
    path = storage.object_path(pointer.oid)
    path.parent.mkdir(parents=True)
    if planted == "longer":
        path.write_bytes(data + bytes(16 * MIB))
        detail = f"{PAYLOAD + 16 * MIB} bytes, the pointer says {PAYLOAD}"
    elif planted == "fifo":
        os.mkfifo(path)
        detail = "not a regular file"
    else:
        path.symlink_to("/dev/zero")
        detail = "not a regular file"
    read: list[int] = []
    with pytest.raises(LfsObjectCorruptError) as caught:
        within(
            60, lambda: storage.copy_verified(pointer, "model.pth", lambda c: read.append(len(c)))
        )
    assert f"is corrupt ({detail})" in str(caught.value)
    assert read == [], "bytes went out before the object was refused"
    with pytest.raises(LfsObjectCorruptError):
        within(60, lambda: storage.open(pointer, "model.pth"))
