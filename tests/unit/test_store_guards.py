"""Store URLs and object ids: the checks that keep a store inside its root and a URL
what it says.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from botocore.stub import Stubber
from helpers import fetch_bytes

from git_theta_filter.store.base import ObjectStore, StoreUnavailableError
from git_theta_filter.store.directory import DirectoryStore
from git_theta_filter.store.object_format import ObjectFormatError
from git_theta_filter.store.remote import UnsupportedStoreURLError, open_store
from git_theta_filter.store.s3 import S3Store
from git_theta_filter.store.sink import ObjectSink


def tree(path: Path) -> set[Path]:
    return set(path.rglob("*"))


@pytest.fixture
def layout(tmp_path: Path) -> tuple[DirectoryStore, Path, Path]:
    """A directory store under ``tmp/store/objects``, and a file outside it."""
    (tmp_path / "store" / "objects").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.write_bytes(b"not an object")
    return DirectoryStore(tmp_path / "store" / "objects"), outside, tmp_path


def bad_oids(outside: Path) -> list[str]:
    return [
        "../../secret",
        "../" * 21 + "s",  # 64 characters
        str(outside),  # an absolute path: joined as is, it would name the file itself
        "g" * 64,
        "A" * 64,
        "0" * 63,
        "0" * 65,
        "",
    ]


def assert_every_bad_oid_is_refused(store: ObjectStore, outside: Path, source: Path) -> None:
    """has, get and put each refuse every id of ``bad_oids(outside)`` as invalid."""
    for oid in bad_oids(outside):
        with pytest.raises(ValueError, match="invalid object id"):
            store.has(oid)
        with pytest.raises(ValueError, match="invalid object id"):
            store.get(oid, ObjectSink(io.BytesIO(), store.url, oid, 1 << 20))
        with pytest.raises(ValueError, match="invalid object id"):
            store.put(oid, source)


def test_directory_store_refuses_an_oid_that_is_not_64_hex_digits_and_touches_nothing(
    layout: tuple[DirectoryStore, Path, Path],
) -> None:
    store, outside, top = layout
    source = top / "source"
    source.write_bytes(b"payload")
    before = tree(top)
    assert_every_bad_oid_is_refused(store, outside, source)
    assert tree(top) == before
    assert outside.read_bytes() == b"not an object"


def test_directory_store_takes_a_valid_oid(layout: tuple[DirectoryStore, Path, Path]) -> None:
    store, _outside, top = layout
    source = top / "source"
    source.write_bytes(b"payload")
    oid = hashlib.sha256(b"payload").hexdigest()
    assert store.put(oid, source) and store.has(oid)
    assert fetch_bytes(store, oid, top / "copy") == b"payload"


@pytest.mark.parametrize("url", ["host:objects", "user@host:theta/objects", "h:/srv/objects"])
def test_open_store_refuses_an_scp_like_url(tmp_path: Path, url: str) -> None:
    # git reads "host:path" as ssh; taking it as a local directory named "host:objects"
    # would push objects into the work tree.
    with pytest.raises(UnsupportedStoreURLError, match="unsupported URL"):
        open_store(url, base=tmp_path)


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("objects", "objects"),
        ("./host:objects", "host:objects"),
        ("sub/host:objects", "sub/host:objects"),
    ],
)
def test_open_store_takes_a_relative_path_with_a_colon_after_a_slash(
    tmp_path: Path, url: str, root: str
) -> None:
    store = open_store(url, base=tmp_path)
    assert isinstance(store, DirectoryStore) and store.root == tmp_path / root


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3:///prefix",
        "s3://bucket?x=1",
        "s3://bucket/p?versionId=2",
        "s3://bucket#f",
        "https://bucket/prefix",
        "file://bucket/prefix",
    ],
)
def test_s3_store_refuses_a_url_without_a_bucket_or_with_a_query_or_fragment(url: str) -> None:
    with pytest.raises(UnsupportedStoreURLError, match="unsupported URL"):
        S3Store.from_url(url, endpoint_url=None, workers=1)
    with pytest.raises(UnsupportedStoreURLError, match="unsupported URL"):
        open_store(url, base=Path("/nonexistent"))


def test_s3_store_takes_a_bucket_and_prefix() -> None:
    store = S3Store.from_url("s3://bucket/pre/fix", endpoint_url=None, workers=1)
    assert (store.bucket, store.prefix) == ("bucket", "pre/fix")


def stubbed(store: S3Store) -> Stubber:
    """The store's client answering from a script instead of the network (a call the script
    does not expect fails the test), its bucket found."""
    stubber = Stubber(store._client)
    stubber.add_response("head_bucket", {}, {"Bucket": "bucket"})
    return stubber


def test_s3_store_refuses_an_oid_that_is_not_64_hex_digits_before_any_object_request(
    tmp_path: Path,
) -> None:
    store = S3Store.from_url("s3://bucket/prefix", endpoint_url=None, workers=1)
    source = tmp_path / "source"
    source.write_bytes(b"payload")
    with stubbed(store):
        assert_every_bad_oid_is_refused(store, tmp_path / "secret", source)


def test_s3_store_names_a_local_copy_the_service_refused_as_damaged(tmp_path: Path) -> None:
    # moto does not check the sha256 an upload carries; a real service answers BadDigest.
    store = S3Store.from_url("s3://bucket/prefix", endpoint_url=None, workers=1)
    source = tmp_path / "source"
    source.write_bytes(b"payload")
    oid = hashlib.sha256(b"payload").hexdigest()
    with stubbed(store) as stubber:
        stubber.add_client_error("put_object", "BadDigest", http_status_code=400)
        with pytest.raises(ObjectFormatError) as raised:
            store.put(oid, source)
    assert str(raised.value) == (
        f"object {oid} is corrupt: the local copy does not hash to its id; the store refused it"
    )


def test_s3_store_takes_a_missing_object_as_absent_and_a_refusal_as_unavailable() -> None:
    store = S3Store.from_url("s3://bucket/prefix", endpoint_url=None, workers=1)
    oid = hashlib.sha256(b"payload").hexdigest()
    with stubbed(store) as stubber:
        stubber.add_client_error("head_object", "404", http_status_code=404)
        assert not store.has(oid)
        stubber.add_client_error("head_object", "403", "Forbidden", http_status_code=403)
        with pytest.raises(StoreUnavailableError, match=f"object {oid} in s3://bucket/prefix"):
            store.has(oid)
