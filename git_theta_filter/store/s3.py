"""A store in S3 or an S3-compatible service (MinIO, Ceph, R2 ...): ``s3://bucket/prefix``.

Objects are keys ``<prefix>/aa/bb/<oid>``. Credentials come from boto3's
standard chain; the endpoint is the caller's (``theta.s3.endpoint``), else
boto3's own choice: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, the AWS
config files, else AWS (``remotes.py`` decides; docs/security.md, class 2).

Puts never replace an object: they are conditional (``If-None-Match: *``), and
a "precondition failed" answer means another writer got there first, which for
content-addressed objects is success. A service that does not implement
conditional writes is then written to unconditionally, which is still safe
because equal keys have equal content. Every upload carries the object's
sha256 (the whole object's, or each part's), so the service itself refuses
bytes that were damaged on the way. Objects over :data:`MULTIPART_THRESHOLD`
go up as parts, in parallel.

This module imports boto3; nothing imports it unless an S3 store is used.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from .base import (
    ObjectStore,
    RemoteObjectMissingError,
    StoreUnavailableError,
    UnsupportedStoreURLError,
)
from .object_format import ObjectFormatError, is_valid_oid
from .sink import ObjectSink

__all__ = ["S3Store", "MULTIPART_THRESHOLD", "PART_SIZE", "configured_endpoint"]

MULTIPART_THRESHOLD = 64 << 20
PART_SIZE = 16 << 20
# Parallel parts (or ranges) within one large object, on top of the object-level threads.
PART_CONCURRENCY = 4

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_ALREADY_THERE = {"412", "PreconditionFailed"}
# Another conditional write of the same key is in flight (409); it will leave the same bytes.
_CONCURRENT_WRITE = {"409", "ConditionalRequestConflict"}
_NO_CONDITIONAL_WRITES = {"501", "NotImplemented"}


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _sha256_base64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def configured_endpoint() -> str | None:
    """The S3 endpoint the user's AWS settings name, as boto3 resolves them
    (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``endpoint_url`` in the AWS config
    files), or None when they name none and boto3 would use AWS itself.

    Building a client reads those settings; it sends nothing.
    """
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(name) and not _ignoring_configured_endpoints():
            return os.environ[name]
    try:
        endpoint = boto3.session.Session().client("s3").meta.endpoint_url
    except botocore.exceptions.BotoCoreError:
        return None  # a broken AWS profile: opening the store reports it
    host = (urlsplit(endpoint).hostname or "").lower()
    return None if host.endswith((".amazonaws.com", ".amazonaws.com.cn")) else endpoint


def _ignoring_configured_endpoints() -> bool:
    return os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true"


class S3Store(ObjectStore):
    def __init__(
        self, url: str, bucket: str, prefix: str, *, endpoint_url: str | None, workers: int
    ) -> None:
        self.url = url
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.workers = workers
        self._conditional_puts = True
        self._bucket_checked = False
        self._bucket_lock = threading.Lock()
        config = botocore.config.Config(
            # Object-level threads times part-level threads may all hold a connection.
            max_pool_connections=workers * PART_CONCURRENCY,
            # Attempts come from AWS_MAX_ATTEMPTS or ~/.aws/config (3 by default).
            retries={"mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
        )
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, config=config
        )
        self._transfer_config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=PART_SIZE,
            max_concurrency=PART_CONCURRENCY,
        )

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None, workers: int) -> S3Store:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise UnsupportedStoreURLError(url)
        return cls(url, parts.netloc, parts.path, endpoint_url=endpoint_url, workers=workers)

    def _key(self, oid: str) -> str:
        if not is_valid_oid(oid):
            raise ValueError(f"invalid object id {oid!r}")
        name = f"{oid[0:2]}/{oid[2:4]}/{oid}"
        return f"{self.prefix}/{name}" if self.prefix else name

    @contextmanager
    def _translated(self, oid: str | None = None) -> Iterator[None]:
        """botocore's failures as our named errors."""
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            code = _error_code(exc)
            if oid is not None and code in _NOT_FOUND:
                raise RemoteObjectMissingError(self.url, oid) from None
            if code == "BadDigest" and oid is not None:
                raise ObjectFormatError(
                    oid, "the local copy does not hash to its id; the store refused it"
                ) from None
            message = exc.response.get("Error", {}).get("Message") or str(exc)
            raise StoreUnavailableError(self.url, f"{code}: {message}", oid=oid) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StoreUnavailableError(self.url, str(exc), oid=oid) from None

    def _check_bucket(self) -> None:
        """Once per store: a missing bucket or a refusal is named as such,
        not as missing objects.
        """
        with self._bucket_lock:
            if self._bucket_checked:
                return
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except botocore.exceptions.ClientError as exc:
                code = _error_code(exc)
                reason = {
                    "404": f"bucket {self.bucket!r} does not exist",
                    "403": f"access to bucket {self.bucket!r} is denied",
                }
                raise StoreUnavailableError(self.url, reason.get(code, f"{code}: {exc}")) from None
            except botocore.exceptions.BotoCoreError as exc:
                raise StoreUnavailableError(self.url, str(exc)) from None
            self._bucket_checked = True

    # -- reading -------------------------------------------------------------
    def has(self, oid: str) -> bool:
        self._check_bucket()
        try:
            with self._translated(oid):
                self._client.head_object(Bucket=self.bucket, Key=self._key(oid))
        except RemoteObjectMissingError:
            return False
        return True

    def batch_has(self, oids: Iterable[str]) -> set[str]:
        wanted = list(oids)
        if len(wanted) <= 1:
            return {oid for oid in wanted if self.has(oid)}
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return {
                oid
                for oid, present in zip(wanted, pool.map(self.has, wanted), strict=True)
                if present
            }

    def get(self, oid: str, sink: ObjectSink) -> None:
        self._check_bucket()
        with self._translated(oid):
            # The sink is not seekable, so s3transfer writes ranges in order, and the
            # sink cuts off an object longer than the manifest allows as it arrives.
            self._client.download_fileobj(
                self.bucket, self._key(oid), sink, Config=self._transfer_config
            )

    def list(self) -> Iterator[str]:
        self._check_bucket()
        start = f"{self.prefix}/" if self.prefix else ""
        with self._translated():
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start
            ):
                for entry in page.get("Contents", []):
                    name = entry["Key"][len(start) :]
                    oid = name.rpartition("/")[2]
                    if is_valid_oid(oid) and name == f"{oid[0:2]}/{oid[2:4]}/{oid}":
                        yield oid

    # -- writing -------------------------------------------------------------
    def put(self, oid: str, source: Path) -> bool:
        self._check_bucket()
        size = source.stat().st_size
        for _attempt in range(3):
            conditional = self._conditional_puts
            with self._translated(oid):
                try:
                    if size > MULTIPART_THRESHOLD:
                        self._put_multipart(oid, source, size, conditional)
                    else:
                        self._put_single(oid, source, conditional)
                    return True
                except botocore.exceptions.ClientError as exc:
                    code = _error_code(exc)
                    if code in _ALREADY_THERE:
                        return False
                    if code in _NO_CONDITIONAL_WRITES and conditional:
                        self._conditional_puts = False
                        continue
                    if code in _CONCURRENT_WRITE:
                        continue
                    raise
        # Conflicts every time: the other writer's object, when it lands, is ours too.
        if self.has(oid):
            return False
        raise StoreUnavailableError(self.url, "conditional writes kept conflicting", oid=oid)

    def _condition(self, conditional: bool) -> dict[str, str]:
        return {"IfNoneMatch": "*"} if conditional else {}

    def _put_single(self, oid: str, source: Path, conditional: bool) -> None:
        with open(source, "rb") as body:
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._key(oid),
                Body=body,
                # The oid is the sha256 of these bytes: the service checks them for us.
                ChecksumSHA256=_sha256_base64(bytes.fromhex(oid)),
                **self._condition(conditional),
            )

    def _put_multipart(self, oid: str, source: Path, size: int, conditional: bool) -> None:
        key = self._key(oid)
        upload_id = self._client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256"
        )["UploadId"]

        def upload_part(number: int) -> dict[str, object]:
            with open(source, "rb") as file:
                file.seek((number - 1) * PART_SIZE)
                data = file.read(PART_SIZE)
            checksum = _sha256_base64(hashlib.sha256(data).digest())
            response = self._client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ChecksumSHA256=checksum,
            )
            return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}

        try:
            count = -(-size // PART_SIZE)
            with ThreadPoolExecutor(max_workers=PART_CONCURRENCY) as pool:
                parts = list(pool.map(upload_part, range(1, count + 1)))
            self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **self._condition(conditional),
            )
        except BaseException:
            # Leave no parts behind to be billed for: the upload never became an object.
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                pass  # the original failure is the one worth reporting
            raise
