"""Stores and transfers, without git clones: directory stores on disk."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import canonical_bytes, fetch_bytes, loose_object

from git_theta_filter.progress import QuietProgress
from git_theta_filter.store.base import RemoteObjectMissingError, StoreUnavailableError
from git_theta_filter.store.directory import DirectoryStore
from git_theta_filter.store.local import LocalStore
from git_theta_filter.store.object_format import ObjectFormatError
from git_theta_filter.store.sink import ObjectSink
from git_theta_filter.store.transfer import (
    DownloadVerificationError,
    TransferFailedError,
    download,
    relay,
    upload,
)

SIZE = 4096


def payloads(oids: list[str], size: int = SIZE) -> dict[str, int]:
    """What the manifests would say of objects made by :func:`make_objects`."""
    return dict.fromkeys(oids, size)


def make_objects(store: LocalStore, count: int, size: int = SIZE) -> list[str]:
    """``count`` distinct valid objects in ``store``."""
    return [
        store.write_bytes(hashlib.sha256(f"{i}".encode()).digest() * (size // 32))
        for i in range(count)
    ]


def object_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def assert_local_store_valid(store: LocalStore, oids: set[str]) -> None:
    """The local store holds exactly ``oids``, each decoding to bytes that hash to its id."""
    assert set(store.iter_oids()) == oids
    for oid in oids:
        store.verify(oid)


def assert_store_valid(root: Path, oids: set[str]) -> None:
    """Exactly ``oids`` under ``root``, each hashing to its name, and no other file."""
    files = object_files(root)
    assert sorted(path.name for path in files) == sorted(oids), (
        f"unexpected files: {[str(p) for p in files]}"
    )
    for path in files:
        assert path.relative_to(root).parts == (path.name[:2], path.name[2:4], path.name)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name


@pytest.fixture
def local(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "local" / "theta")


@pytest.fixture
def remote(tmp_path) -> DirectoryStore:
    (tmp_path / "shared").mkdir()
    return DirectoryStore(tmp_path / "shared" / "objects")


# -- the directory store --------------------------------------------------------


def test_directory_store_put_get_has_list(local, remote, tmp_path):
    oids = make_objects(local, 3)
    assert remote.batch_has(oids) == set() and list(remote.list()) == []
    assert remote.put(oids[0], loose_object(local, oids[0])) is True
    assert remote.put(oids[0], loose_object(local, oids[0])) is False
    assert remote.has(oids[0]) and not remote.has(oids[1])
    assert list(remote.list()) == [oids[0]]
    copy = fetch_bytes(remote, oids[0], tmp_path / "copy")
    assert copy == loose_object(local, oids[0]).read_bytes()
    with pytest.raises(RemoteObjectMissingError, match=oids[1]):
        fetch_bytes(remote, oids[1], tmp_path / "copy")
    assert_store_valid(remote.root, {oids[0]})


def test_directory_store_refuses_a_source_that_does_not_hash_to_its_oid(local, remote, tmp_path):
    (oid,) = make_objects(local, 1)
    corrupt = tmp_path / "corrupt"
    corrupt.write_bytes(loose_object(local, oid).read_bytes()[:-1] + b"!")
    with pytest.raises(
        ObjectFormatError, match=f"object {oid} is corrupt: the local copy hashes to"
    ):
        remote.put(oid, corrupt)
    assert object_files(remote.root) == []


def test_directory_store_that_was_never_pushed_to_is_missing_the_object(local, remote, tmp_path):
    # The shared directory is there but holds no objects directory yet: the object is
    # missing (a fetch then tries other stores), not the store unavailable.
    (oid,) = make_objects(local, 1)
    assert not remote.root.exists()
    with pytest.raises(RemoteObjectMissingError, match=oid) as caught:
        fetch_bytes(remote, oid, tmp_path / "copy")
    assert type(caught.value) is RemoteObjectMissingError


def test_directory_store_whose_anchor_is_missing_is_unavailable(local, tmp_path):
    (oid,) = make_objects(local, 1)
    store = DirectoryStore(tmp_path / "not-mounted" / "objects")
    for call in (
        lambda: store.has(oid),
        lambda: store.put(oid, loose_object(local, oid)),
        lambda: list(store.list()),
    ):
        with pytest.raises(StoreUnavailableError, match="not-mounted is not a directory"):
            call()
    assert not (tmp_path / "not-mounted").exists()


def test_many_writers_of_the_same_object_at_once(local, remote):
    (oid,) = make_objects(local, 1, size=1 << 20)
    canonical = loose_object(local, oid)
    barrier = threading.Barrier(12)

    def put() -> bool:
        barrier.wait()
        return remote.put(oid, canonical)

    threads_results: list[bool] = []
    threads = [threading.Thread(target=lambda: threads_results.append(put())) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert threads_results.count(True) == 1 and len(threads_results) == 12
    assert_store_valid(remote.root, {oid})


# -- transfers ------------------------------------------------------------------------


def test_upload_skips_what_the_store_has_and_download_what_the_local_store_has(
    local, remote, tmp_path
):
    oids = make_objects(local, 5)
    remote.put(oids[0], loose_object(local, oids[0]))
    result = upload(local, remote, oids, workers=3, progress=QuietProgress)
    assert (result.transferred, result.skipped) == (4, 1)
    # Remote stores hold canonical bytes (docs/store.md), however the local store encodes them.
    assert result.transferred_bytes == sum(len(canonical_bytes(local, oid)) for oid in oids[1:])
    assert_store_valid(remote.root, set(oids))

    other = LocalStore(tmp_path / "other" / "theta")
    other.write_bytes(hashlib.sha256(b"0").digest() * 128)  # the same bytes as oids[0]
    result = download(other, remote, payloads(oids), workers=3, progress=QuietProgress)
    assert (result.transferred, result.skipped) == (4, 1)
    assert_local_store_valid(other, set(oids))
    assert list(other.tmp_dir.glob("*")) == []


def test_upload_reports_an_object_the_local_store_lacks_and_sends_the_others(local, remote):
    oids = make_objects(local, 2)
    missing = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(TransferFailedError) as failure:
        upload(local, remote, [*oids, missing], workers=2, progress=QuietProgress)
    assert str(failure.value) == (
        f"could not upload 1 of 3 tensor objects: tensor object {missing} "
        "is missing from the local store"
    )
    assert failure.value.url == remote.url and list(failure.value.failures) == [missing]
    assert_store_valid(remote.root, set(oids))


def test_download_refuses_a_corrupt_object_and_keeps_the_good_ones(local, remote, tmp_path):
    oids = make_objects(local, 3)
    upload(local, remote, oids, workers=2, progress=QuietProgress)
    victim = remote.root / oids[1][:2] / oids[1][2:4] / oids[1]
    victim.chmod(0o644)
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")

    fresh = LocalStore(tmp_path / "fresh" / "theta")
    with pytest.raises(TransferFailedError) as failure:
        download(fresh, remote, payloads(oids), workers=2, progress=QuietProgress)
    assert isinstance(failure.value.failures[oids[1]], DownloadVerificationError)
    assert str(failure.value).startswith(
        f"could not download 1 of 3 tensor objects: object {oids[1]} in {remote.url}: is corrupt"
    )
    assert_local_store_valid(fresh, {oids[0], oids[2]})
    assert list(fresh.tmp_dir.glob("*")) == []


def test_unreachable_store_stops_the_transfer(local, tmp_path):
    oids = make_objects(local, 4)
    store = DirectoryStore(tmp_path / "gone" / "objects")
    with pytest.raises(StoreUnavailableError):
        upload(local, store, oids, workers=2, progress=QuietProgress)
    fresh = LocalStore(tmp_path / "fresh" / "theta")
    with pytest.raises(StoreUnavailableError):
        download(fresh, store, payloads(oids), workers=2, progress=QuietProgress)
    assert not fresh.objects_dir.exists() or object_files(fresh.objects_dir) == []


class InterruptingStore(DirectoryStore):
    """Writes half of the third object it serves, then is interrupted (Ctrl-C)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.served = 0
        self.lock = threading.Lock()

    def get(self, oid: str, sink: ObjectSink) -> None:
        with self.lock:
            self.served += 1
            interrupt = self.served == 3
        if interrupt:
            data = self._object_path(oid).read_bytes()
            sink.write(data[: len(data) // 2])
            raise KeyboardInterrupt
        super().get(oid, sink)


def test_interrupted_download_leaves_no_partial_object_and_resumes(local, remote, tmp_path):
    oids = make_objects(local, 6)
    upload(local, remote, oids, workers=2, progress=QuietProgress)
    fresh = LocalStore(tmp_path / "fresh" / "theta")
    with pytest.raises(KeyboardInterrupt):
        download(
            fresh, InterruptingStore(remote.root), payloads(oids), workers=1, progress=QuietProgress
        )
    landed = {path.name for path in object_files(fresh.objects_dir)}
    assert len(landed) == 2
    assert_local_store_valid(fresh, landed)
    assert list(fresh.tmp_dir.glob("*")) == []

    result = download(fresh, remote, payloads(oids), workers=2, progress=QuietProgress)
    assert (result.transferred, result.skipped) == (4, 2)
    assert_local_store_valid(fresh, set(oids))


SLOW_DOWNLOAD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from git_theta_filter.store.directory import DirectoryStore
    from git_theta_filter.progress import QuietProgress
    from git_theta_filter.store.local import LocalStore
    from git_theta_filter.store.transfer import download

    class SlowStore(DirectoryStore):
        def get(self, oid, sink):
            super().get(oid, sink)
            time.sleep(0.3)  # the temp file is complete but not yet verified nor linked

    download(
        LocalStore(Path(sys.argv[1])),
        SlowStore(Path(sys.argv[2])),
        dict.fromkeys(sys.argv[3:], 4096),
        workers=2,
        progress=QuietProgress,
    )
    """
)


def test_killed_download_resumes_without_duplicates_or_partial_objects(local, remote, tmp_path):
    oids = make_objects(local, 8)
    upload(local, remote, oids, workers=4, progress=QuietProgress)
    fresh = LocalStore(tmp_path / "fresh" / "theta")
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_DOWNLOAD, str(fresh.theta_dir), str(remote.root), *oids]
    )

    def mid_transfer() -> bool:
        # Some objects have landed and another download's temp file is waiting.
        landed = fresh.objects_dir.exists() and object_files(fresh.objects_dir)
        return bool(landed) and fresh.tmp_dir.exists() and any(fresh.tmp_dir.glob("*"))

    deadline = time.monotonic() + 30
    while not mid_transfer() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    landed = {path.name for path in object_files(fresh.objects_dir)}
    assert 0 < len(landed) < len(oids), "the kill should land mid-transfer"
    assert_local_store_valid(fresh, landed)
    assert [p.name for p in fresh.tmp_dir.glob("*")] != [], (
        "a killed download leaves its temp files"
    )

    result = download(fresh, remote, payloads(oids), workers=4, progress=QuietProgress)
    assert result.transferred == len(oids) - len(landed)
    assert_local_store_valid(fresh, set(oids))
    assert not [p.name for p in fresh.tmp_dir.glob("download-*")], (
        "the dead process's temp files are removed"
    )


def test_killed_upload_leaves_only_temp_files_that_are_never_objects(local, remote):
    oids = make_objects(local, 3)
    # What a put killed mid-copy leaves: a partial temp file beside the final name.
    leftover = remote.root / oids[0][:2] / oids[0][2:4] / f".{oids[0][:16]}-dead.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(loose_object(local, oids[0]).read_bytes()[:100])
    assert list(remote.list()) == [] and not remote.has(oids[0])

    result = upload(local, remote, oids, workers=2, progress=QuietProgress)
    assert result.transferred == 3
    assert sorted(remote.list()) == sorted(oids)
    assert hashlib.sha256(remote._object_path(oids[0]).read_bytes()).hexdigest() == oids[0]


def test_the_filter_process_imports_neither_torch_nor_boto3():
    code = (
        "import sys, git_theta_filter.cli.filter_process; "
        "print(sorted({'torch', 'boto3'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"


# -- relay ----------------------------------------------------------------------


def test_relay_copies_between_stores_verified_and_never_into_the_local_store(local, tmp_path):
    source_clone = LocalStore(tmp_path / "source-clone" / "theta")
    oids = make_objects(source_clone, 4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    source, target = (
        DirectoryStore(tmp_path / "a" / "objects"),
        DirectoryStore(tmp_path / "b" / "objects"),
    )
    upload(source_clone, source, oids, workers=2, progress=QuietProgress)
    # A corrupt copy in the source is refused, not passed on.
    bad = source.root / oids[0][:2] / oids[0][2:4] / oids[0]
    bad.chmod(0o644)
    bad.write_bytes(b"not the object")
    target.put(oids[1], loose_object(source_clone, oids[1]))

    with pytest.raises(TransferFailedError) as caught:
        relay(local, source, target, payloads(oids), workers=2, progress=QuietProgress)
    assert isinstance(caught.value.failures[oids[0]], DownloadVerificationError)
    assert_store_valid(target.root, set(oids[1:]))
    assert list(local.iter_oids()) == []
    assert not any(local.tmp_dir.iterdir()), "relay left temp files behind"

    result = relay(local, source, target, payloads(oids[1:]), workers=2, progress=QuietProgress)
    assert (result.transferred, result.skipped) == (0, 3)
