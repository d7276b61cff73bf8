"""The Git LFS store against a real LFS server (giftless on 127.0.0.1): batches, retries,
expiry, per-object errors, verify, connection reuse, size checks, credentials' limits."""

from __future__ import annotations

import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import fetch_bytes
from lfs_server import LfsServer

from git_theta_filter.store.base import RemoteObjectMissingError
from git_theta_filter.store.lfs import (
    LfsAuthenticationError,
    LfsObjectError,
    LfsRequestError,
    LfsSettings,
    LfsStore,
)
from git_theta_filter.store.lfs_endpoint import LfsEndpoint, endpoint_from_lfs_url
from git_theta_filter.store.object_format import ObjectFormatError
from git_theta_filter.store.sink import DownloadTooLargeError


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = LfsServer(tmp_path_factory.mktemp("lfs-store")).start()
    yield server
    server.stop()


@pytest.fixture
def repo_name(server):
    server.reset()
    return f"store-{uuid.uuid4().hex[:8]}"


def make_objects(folder: Path, count: int, size: int = 64) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    objects = {}
    for i in range(count):
        data = hashlib.sha256(f"{folder}-{i}".encode()).digest() * (size // 32 + 1)
        path = folder / f"o{i}"
        path.write_bytes(data[: size + i])
        objects[hashlib.sha256(path.read_bytes()).hexdigest()] = path
    return objects


class Sleeps(list):
    """Records the waits a store asks for instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def open_store(server: LfsServer, name: str, **settings) -> LfsStore:
    return LfsStore(
        endpoint_from_lfs_url(server.endpoint(name)),
        settings=LfsSettings(**settings),
        sleep=Sleeps(),
    )


def push(store: LfsStore, objects: dict[str, Path]) -> None:
    store.prepare("upload", {oid: (path.stat().st_size,) for oid, path in objects.items()})
    missing = set(objects) - store.batch_has(objects)
    for oid in missing:
        assert store.put(oid, objects[oid]) is True


def sizes(objects: dict[str, Path]) -> dict[str, tuple[int]]:
    return {oid: (path.stat().st_size,) for oid, path in objects.items()}


def test_lfs_store_batches_hold_at_most_100_objects_and_uploads_are_verified(
    server, repo_name, tmp_path
):
    objects = make_objects(tmp_path / "objects", 150)
    store = open_store(server, repo_name)
    push(store, objects)
    batches = [entry["objects"] for entry in server.stats() if entry["kind"] == "batch"]
    assert batches == [100, 50]
    assert server.count("upload") == server.count("verify") == 150
    assert set(server.stored(repo_name)) == set(objects)
    # Asked again, the server has them all: one batch per 100, nothing sent.
    again = open_store(server, repo_name)
    again.prepare("upload", sizes(objects))
    assert again.batch_has(objects) == set(objects)
    assert server.count("upload") == 150


def test_lfs_store_downloads_reuse_each_threads_connection(server, repo_name, tmp_path):
    objects = make_objects(tmp_path / "objects", 24)
    push(open_store(server, repo_name), objects)
    server.reset()
    store = open_store(server, repo_name)
    store.prepare("download", sizes(objects))

    def fetch(oid: str) -> bytes:
        target = tmp_path / "out" / oid
        target.parent.mkdir(exist_ok=True)
        fetch_bytes(store, oid, target)
        return target.read_bytes()

    with ThreadPoolExecutor(max_workers=4) as pool:
        got = dict(zip(objects, pool.map(fetch, objects), strict=True))
    assert all(got[oid] == path.read_bytes() for oid, path in objects.items())
    ports = {entry["client_port"] for entry in server.stats()}
    assert len(ports) <= 4, f"{len(ports)} connections for 24 downloads on 4 threads"
    assert server.count("batch") <= 4


def test_lfs_store_waits_as_retry_after_says_on_429_and_503(server, repo_name, tmp_path):
    objects = make_objects(tmp_path / "objects", 2)
    store = open_store(server, repo_name)
    server.control(
        faults=[
            {"kind": "batch", "status": 429, "retry_after": "7", "count": 1},
            {"kind": "upload", "status": 503, "retry_after": "3", "count": 1},
            {"kind": "verify", "status": 500, "count": 1},
        ]
    )
    push(store, objects)
    assert set(server.stored(repo_name)) == set(objects)
    waits = store._sleep
    assert waits[:2] == [7.0, 3.0]
    assert len(waits) == 3 and 0 < waits[2] <= 0.25, "a 500 without Retry-After backs off"


def test_lfs_store_gives_up_after_lfs_transfer_maxretries(server, repo_name, tmp_path):
    objects = make_objects(tmp_path / "objects", 1)
    store = open_store(server, repo_name, max_retries=2)
    server.control(faults=[{"kind": "batch", "status": 503, "count": 10}])
    with pytest.raises(LfsRequestError, match="upload batch request failed with HTTP 503"):
        push(store, objects)
    assert server.count("batch") == 3
    server.control(faults=[{"kind": "batch", "status": 429, "retry_after": "3600", "count": 1}])
    with pytest.raises(LfsRequestError, match="asks to wait 3600 s"):
        push(open_store(server, repo_name), objects)


@pytest.mark.parametrize("expiry", [{"expires_in": 1}, {"expires_at": "2000-01-01T00:00:00Z"}])
def test_lfs_store_asks_again_for_actions_about_to_expire(server, repo_name, tmp_path, expiry):
    objects = make_objects(tmp_path / "objects", 3)
    push(open_store(server, repo_name), objects)
    server.reset()
    fresh = open_store(server, repo_name)
    fresh.prepare("download", sizes(objects))
    for oid in objects:
        fetch_bytes(fresh, oid, tmp_path / "copy")
    assert server.count("batch") == 1, "unexpired actions come from one batch"

    server.reset()
    server.control(**expiry)
    expiring = open_store(server, repo_name)
    expiring.prepare("download", sizes(objects))
    for oid, path in objects.items():
        fetch_bytes(expiring, oid, tmp_path / "copy")
        assert (tmp_path / "copy").read_bytes() == path.read_bytes()
    assert server.count("batch") == 3, "each object's expired action was asked for again"


def test_lfs_store_reports_object_errors_per_object(server, repo_name, tmp_path):
    objects = make_objects(tmp_path / "objects", 3)
    push(open_store(server, repo_name), objects)
    present, removed, other = list(objects)
    unknown = hashlib.sha256(b"never uploaded").hexdigest()
    server.control(object_errors={removed: 410})
    store = open_store(server, repo_name)
    store.prepare("download", {**sizes(objects), unknown: (40,)})
    fetch_bytes(store, present, tmp_path / "copy")
    with pytest.raises(LfsObjectError, match=f"object {removed} in .*: was removed"):
        fetch_bytes(store, removed, tmp_path / "copy")
    with pytest.raises(RemoteObjectMissingError, match=unknown):
        fetch_bytes(store, unknown, tmp_path / "copy")
    assert store.batch_has(objects) == {present, other}


def test_lfs_store_tries_the_next_possible_size_when_the_server_refuses_one(
    server, repo_name, tmp_path
):
    objects = make_objects(tmp_path / "objects", 1)
    push(open_store(server, repo_name), objects)
    (oid, path), size = next(iter(objects.items())), next(iter(objects.values())).stat().st_size
    store = open_store(server, repo_name)
    store.prepare("download", {oid: (size + 8, size)})
    fetch_bytes(store, oid, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == path.read_bytes()
    wrong = open_store(server, repo_name)
    wrong.prepare("download", {oid: (size + 8,)})
    with pytest.raises(LfsObjectError, match="LFS error 422"):
        fetch_bytes(wrong, oid, tmp_path / "copy")


def test_lfs_store_cuts_a_download_longer_than_announced(server, repo_name, tmp_path):
    objects = make_objects(tmp_path / "objects", 1)
    push(open_store(server, repo_name), objects)
    server.control(extra_bytes=4096)
    store = open_store(server, repo_name)
    store.prepare("download", sizes(objects))
    with pytest.raises(DownloadTooLargeError, match="sent more than"):
        fetch_bytes(store, next(iter(objects)), tmp_path / "copy")


def test_lfs_store_never_uploads_a_corrupt_local_object_whole(server, repo_name, tmp_path):
    objects = make_objects(tmp_path / "objects", 1)
    oid, path = next(iter(objects.items()))
    path.write_bytes(path.read_bytes()[:-1] + b"\xff")
    store = open_store(server, repo_name, max_retries=0)
    with pytest.raises(ObjectFormatError, match="does not hash to its id"):
        store.put(oid, path)
    check = open_store(server, repo_name)
    check.prepare("upload", sizes(objects))
    assert check.batch_has([oid]) == set(), "the server must not hold the object whole"


def test_lfs_store_sends_no_credentials_over_http_to_an_endpoint_only_a_file_names(
    tmp_path,
):
    server = LfsServer(tmp_path / "auth", auth="tester:pw-5e1f").start()
    try:
        endpoint = endpoint_from_lfs_url(server.endpoint(), user_configured=False)

        class NeverAsked:
            def fill(self, url):  # pragma: no cover - the guard under test
                raise AssertionError("credentials were asked for")

        store = LfsStore(endpoint, credentials=NeverAsked(), sleep=Sleeps())  # type: ignore[arg-type]
        store.prepare("upload", {"0" * 64: (1,)})
        with pytest.raises(LfsAuthenticationError, match="not sent over plain http"):
            store.batch_has(["0" * 64])
        assert not any(entry["authorization"] for entry in server.stats())
    finally:
        server.stop()


def test_lfs_store_uses_credentials_written_into_the_url(tmp_path):
    server = LfsServer(tmp_path / "auth", auth="tester:pw-5e1f").start()
    try:
        url = server.endpoint().replace("http://", "http://tester:pw-5e1f@")
        endpoint = endpoint_from_lfs_url(url)
        assert isinstance(endpoint, LfsEndpoint) and "pw-5e1f" not in endpoint.url + repr(endpoint)
        store = LfsStore(endpoint, sleep=Sleeps())
        objects = make_objects(tmp_path / "objects", 2)
        push(store, objects)
        assert set(server.stored()) == set(objects)
        assert "pw-5e1f" not in store.url
    finally:
        server.stop()
