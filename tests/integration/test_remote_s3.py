"""Sharing through an S3 store: a real HTTP S3 endpoint (moto's server) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from conftest import free_port
from helpers import fetch_bytes, sha256_file
from remote_scenarios import (
    MODEL,
    History,
    assert_valid_objects,
    commit_versions,
    init_clone,
    run_round_trip,
)

from git_theta_filter.store import s3
from git_theta_filter.store.base import StoreUnavailableError

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def bucket(s3_endpoint, git_env, monkeypatch):
    """A fresh bucket; the test's git commands
    (and this process) reach it through AWS_ENDPOINT_URL.
    """
    for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(key, value)
        git_env.env[key] = value
    name = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def bucket_objects(name: str, prefix: str) -> dict[str, bytes]:
    client = boto3.client("s3")
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=prefix):
        for entry in page.get("Contents", []):
            found[entry["Key"]] = client.get_object(Bucket=name, Key=entry["Key"])["Body"].read()
    return found


def test_round_trip_through_s3_configured_by_a_committed_thetaconfig(git_env, tmp_path, bucket):
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))

    def thetaconfig(repo: Path) -> list[str]:
        git_env.git(
            repo, "config", "--file", ".thetaconfig", "theta.url", f"s3://{bucket}/team/resnet"
        )
        return [".thetaconfig"]

    # B gets the store from .thetaconfig alone; A pulls with `git theta pull`. The remote
    # is reached over a transport with no store of its own (as https or ssh would be): a
    # path remote's own store would win over the committed file (docs/security.md).
    git_env.run("git", "config", "--global", "protocol.ext.allow", "always")
    origin = f"ext::git %s {bare}"
    run_round_trip(git_env, tmp_path, origin, extra_files=thetaconfig, pull_with_theta=True)

    stored = {
        key.rpartition("/")[2]: (key, data) for key, data in bucket_objects(bucket, "").items()
    }
    for oid, (key, _) in stored.items():
        assert key == f"team/resnet/{oid[:2]}/{oid[2:4]}/{oid}"
    assert_valid_objects(set(stored), lambda oid: stored[oid][1])
    assert not (bare / "theta").exists(), ".thetaconfig must win over the bare repository's store"


def test_unreachable_endpoint_and_missing_bucket_refuse_the_push(git_env, tmp_path, bucket):
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    a = init_clone(git_env, tmp_path / "A", str(bare))
    commit_versions(git_env, a, range(1), History())

    git_env.git(a, "config", "theta.remote.origin.url", f"s3://{bucket}/m")
    git_env.git(a, "config", "theta.s3.endpoint", f"http://127.0.0.1:{free_port()}")
    result = git_env.run(
        "git", "push", "origin", "main", cwd=a, check=False, env={"AWS_MAX_ATTEMPTS": "1"}
    )
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert (
        f"refusing to push to 'origin': uploading tensor objects to s3://{bucket}/m failed"
        in stderr
    )
    assert "Could not connect to the endpoint URL" in stderr
    assert git_env.git(bare, "for-each-ref") == ""

    git_env.git(a, "config", "--unset", "theta.s3.endpoint")
    git_env.git(a, "config", "theta.remote.origin.url", "s3://no-such-bucket-here/m")
    result = git_env.run("git", "push", "origin", "main", cwd=a, check=False)
    assert result.returncode != 0
    assert "bucket 'no-such-bucket-here' does not exist" in result.stderr.decode()
    assert git_env.git(bare, "for-each-ref") == ""
    assert bucket_objects(bucket, "") == {}
    assert list((a / ".git" / "theta" / "tmp").glob("*")) == []


def test_corrupt_object_in_s3_is_refused_on_download(git_env, tmp_path, bucket):
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    a = init_clone(git_env, tmp_path / "A", str(bare))
    git_env.git(a, "config", "theta.remote.origin.url", f"s3://{bucket}")
    commit_versions(git_env, a, range(1), History())
    git_env.git(a, "push", "-q", "origin", "main")
    key, data = max(bucket_objects(bucket, "").items(), key=lambda item: len(item[1]))
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data[:-1] + bytes([data[-1] ^ 1]))

    b = tmp_path / "B"
    git_env.run(
        "git",
        "clone",
        "-q",
        "-c",
        f"theta.remote.origin.url=s3://{bucket}",
        str(bare),
        str(b),
        env={"GIT_THETA_SKIP_SMUDGE": "1"},
    )
    result = git_env.theta(b, "pull", check=False)
    oid = key.rpartition("/")[2]
    assert result.returncode == 1
    assert f"object {oid} in s3://{bucket}: is corrupt" in result.stderr.decode()
    assert not list((b / ".git" / "theta" / "objects").glob(f"*/*/{oid}"))
    assert (b / MODEL).read_bytes().startswith(b"git-theta-manifest "), (
        "a file was written from a refused object"
    )


def test_s3_store_multipart_conditional_and_concurrent_puts(bucket, tmp_path, monkeypatch):
    # Small parts so a multipart upload stays fast; 5 MiB is S3's smallest part.
    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", 6 << 20)
    monkeypatch.setattr(s3, "PART_SIZE", 5 << 20)
    store = s3.S3Store.from_url(f"s3://{bucket}/pre/fix", endpoint_url=None, workers=4)
    large = tmp_path / "large"
    large.write_bytes(hashlib.sha256(b"seed").digest() * ((11 << 20) // 32))
    small = tmp_path / "small"
    small.write_bytes(b"tiny object")
    oids = {path: sha256_file(path) for path in (large, small)}

    # Three writers of each object at once all succeed. (Which one wins is the
    # service's business; moto's conditional checks are not atomic, S3's are.)
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda path: store.put(oids[path], path), [large, small] * 3))
    assert set(outcomes) <= {True, False} and True in outcomes
    for path, oid in oids.items():
        assert store.put(oid, path) is False, "an existing object must not be written again"
    assert sorted(store.list()) == sorted(oids.values())
    assert store.batch_has([*oids.values(), "0" * 64]) == set(oids.values())
    for path, oid in oids.items():
        # Ranged and in parallel for the large one, written in order into the sink.
        assert fetch_bytes(store, oid, tmp_path / f"copy-{path.name}") == path.read_bytes()

    with pytest.raises(StoreUnavailableError, match="does not exist"):
        s3.S3Store.from_url("s3://no-such-bucket-here", endpoint_url=None, workers=1).has("0" * 64)
