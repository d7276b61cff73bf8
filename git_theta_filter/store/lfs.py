"""A store behind a Git LFS server: the batch API with the ``basic`` transfer (``lfs+https://…``).

An object is an LFS object: its oid is the sha256 of the bytes uploaded, so
git-lfs itself can download what this store uploads, and the other way round.
The wire format is in ``docs/lfs-wire.md``; ``lfs_protocol.py`` builds and
checks the JSON, this module does the HTTP:

* **Batches.** The transfer layer announces the objects it is about to move
  (:meth:`LfsStore.prepare`); their actions are asked for at most 100 per
  batch request, when a worker first needs one of them, so a long transfer
  never works from actions that expired while it waited.
* **Expiry.** An action is used only while it has more than
  :data:`EXPIRY_MARGIN` seconds left; otherwise the batch is asked again. An
  action refused with 401/403 is asked for once more too.
* **Retries.** Connection failures, 429 and 5xx are retried up to
  ``lfs.transfer.maxretries`` times, waiting what ``Retry-After`` says or an
  exponential backoff capped at ``lfs.transfer.maxretrydelay``.
* **Connections.** Each transfer thread keeps one ``requests`` session, so
  its requests reuse kept-alive connections.
* **Credentials.** A request first goes without them. On 401 the endpoint's
  credential comes from ``git credential fill`` (or the URL), is approved
  after the first success and rejected when refused. Credentials go only to
  the endpoint's own origin, and over plain http only to an endpoint the
  user configured. Action hrefs elsewhere (a signed S3 URL) get only the
  headers the server put in the action.
* **Checks.** An upload streams the object while hashing it and withholds
  its last byte unless the hash is the oid; a download stops at the size the
  server confirmed. The caller re-hashes every download (``transfer.py``).
"""

from __future__ import annotations

import base64
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.auth

from .base import ObjectStore, RemoteObjectMissingError, StoreError, StoreUnavailableError
from .lfs_endpoint import LfsEndpoint
from .lfs_protocol import (
    MAX_BATCH,
    MAX_RESPONSE_BYTES,
    MEDIA_TYPE,
    Action,
    Credential,
    ObjectAnswer,
    ObjectError,
    Operation,
    batch_request,
    parse_batch_response,
    parse_error_message,
    parse_retry_after,
    redact_url,
    verify_request,
)
from .lfs_ssh import SshAuthenticator
from .local import COPY_CHUNK, is_valid_oid
from .object_format import ObjectFormatError

__all__ = [
    "LfsStore",
    "LfsSettings",
    "HttpOptions",
    "CredentialSource",
    "LfsRequestError",
    "LfsAuthenticationError",
    "LfsObjectError",
    "LfsObjectTooLargeError",
    "LfsDownloadSizeError",
    "EXPIRY_MARGIN",
]

# An action is reused only while it has longer than this to live (git-lfs uses the same).
EXPIRY_MARGIN = 5.0
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_JSON_HEADERS = {"Accept": MEDIA_TYPE, "Content-Type": MEDIA_TYPE}
_USER_AGENT = "git-theta-filter (git-lfs batch API)"
_BACKOFF_START = 0.25
_ERROR_BODY_LIMIT = 64 << 10


class CredentialSource(Protocol):
    """``git credential`` (``git_credential.GitCredentials``) or a stand-in."""

    def fill(self, url: str) -> Credential: ...
    def approve(self, credential: Credential) -> None: ...
    def reject(self, credential: Credential) -> None: ...


@dataclass(frozen=True)
class HttpOptions:
    """git's http.* settings that apply to one URL: ``http.extraHeader``, ``http.sslCAInfo``
    and ``http.sslVerify``."""

    extra_headers: tuple[tuple[str, str], ...] = ()
    verify: bool | str = True


@dataclass(frozen=True)
class LfsSettings:
    """The ``lfs.*`` and ``theta.lfs.*`` settings a store runs with."""

    max_retries: int = 8  # lfs.transfer.maxretries
    max_retry_delay: float = 10.0  # lfs.transfer.maxretrydelay: the backoff's cap, in seconds
    max_retry_after: float = 300.0  # a longer Retry-After fails the request instead
    connect_timeout: float = 30.0  # lfs.dialtimeout
    activity_timeout: float = 60.0  # lfs.activitytimeout: the longest silence in a response
    max_object_size: int | None = None  # theta.lfs.maxObjectSize
    connections: int = 8  # lfs.concurrenttransfers: the transfer threads' count
    ref: str | None = None  # the ref being pushed or fetched, for servers that check it


class LfsRequestError(StoreUnavailableError):
    """The LFS server answered a request with an error status."""

    def __init__(
        self, url: str, what: str, status: int, message: str, *, oid: str | None = None
    ) -> None:
        said = f": {message}" if message else ""
        super().__init__(url, f"{what} failed with HTTP {status}{said}", oid=oid)
        self.status = status


class LfsAuthenticationError(StoreUnavailableError):
    """The server refused the credentials, or asked for some that may not be sent."""


class LfsObjectError(StoreError):
    """The server refused one object (410 removed, 422 invalid, or another code)."""

    def __init__(self, url: str, oid: str, code: int, message: str) -> None:
        meaning = {410: "was removed from the server", 422: "was refused as invalid"}
        said = f": {message}" if message else ""
        super().__init__(
            url,
            f"{meaning.get(code, 'was refused')} (LFS error {code}){said}",
            oid=oid,
            hint="push it again from a clone that has it: `git theta push --all`",
        )
        self.code = code


class LfsObjectTooLargeError(StoreError):
    """An object over ``theta.lfs.maxObjectSize``: refused before any byte is sent."""

    def __init__(self, url: str, oid: str, size: int, limit: int) -> None:
        super().__init__(
            url,
            f"is {size} bytes, over theta.lfs.maxObjectSize ({limit} bytes); not uploaded",
            oid=oid,
            hint="use a store without that limit for this remote "
            "(`git config theta.remote.<remote>.url s3://…`), or raise the limit "
            "if the server allows it",
        )
        self.size = size
        self.limit = limit


class LfsDownloadSizeError(StoreError):
    """A download that did not have the size the server announced; cut off, nothing kept."""


class _ActionRefused(Exception):
    """An action href answered 401/403: its pre-signed authorization has gone stale."""


class _BrokenOff(Exception):
    """A download stopped short; it may be tried again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _SizedAdapter(requests.adapters.HTTPAdapter):
    """Sends request bodies in 1 MiB blocks instead of http.client's 16 KiB."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = COPY_CHUNK
        super().init_poolmanager(*args, **kwargs)


class _Credentials(requests.auth.AuthBase):
    """Sets Basic authorization when there is a credential; with none, it still keeps
    requests from reaching for ~/.netrc on its own."""

    def __init__(self, credential: Credential | None) -> None:
        self.credential = credential

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.credential is not None:
            pair = f"{self.credential.username}:{self.credential.password}".encode()
            request.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return request


class _HashingReader:
    """The object's bytes as a request body: hashed on the way, the last block withheld
    unless the bytes hash to ``oid``, so a corrupt local object never lands whole."""

    def __init__(self, path: Path, oid: str, size: int) -> None:
        self._file: BinaryIO = open(path, "rb")
        self._oid = oid
        self._size = size
        self._sent = 0
        self._hash = hashlib.sha256()

    def __len__(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._sent

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) != (0, 0):
            raise OSError("an upload body can only be rewound to its start")
        self._file.seek(0)
        self._sent = 0
        self._hash = hashlib.sha256()
        return 0

    def read(self, size: int = -1) -> bytes:
        left = self._size - self._sent
        if left <= 0:
            return b""
        data = self._file.read(left if size is None or size < 0 else min(size, left))
        if not data:
            raise ObjectFormatError(
                self._oid, f"the local copy ends after {self._sent} of {self._size} bytes"
            )
        self._hash.update(data)
        self._sent += len(data)
        if self._sent == self._size and self._hash.hexdigest() != self._oid:
            raise ObjectFormatError(
                self._oid, "the local copy does not hash to its id; upload stopped"
            )
        return data

    def close(self) -> None:
        self._file.close()


def _network_reason(exc: BaseException) -> str:
    """Why a connection failed, without the URL (requests' messages include its query)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


@dataclass
class _Pending:
    """Objects announced for one operation, and the answers (or requests in flight) for them."""

    sizes: dict[str, list[int]] = field(default_factory=dict)
    answers: dict[str, ObjectAnswer] = field(default_factory=dict)
    in_flight: dict[str, threading.Event] = field(default_factory=dict)


class LfsStore(ObjectStore):
    """An object store behind a Git LFS server. Safe to use from several threads."""

    supports_listing = False

    def __init__(
        self,
        endpoint: LfsEndpoint,
        *,
        settings: LfsSettings | None = None,
        credentials: CredentialSource | None = None,
        http_options: Callable[[str], HttpOptions] | None = None,
        ssh: SshAuthenticator | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoint = endpoint
        self.url = endpoint.store_url
        self.settings = settings or LfsSettings()
        self.max_object_size = self.settings.max_object_size
        self._credentials = credentials
        self._http_options = http_options or (lambda _url: HttpOptions())
        self._ssh = ssh
        self._sleep = sleep
        self._threads = threading.local()
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {"upload": _Pending(), "download": _Pending()}
        self._auth_lock = threading.Lock()
        self._credential: Credential | None = None
        self._credential_approved = False
        # Once credentials are refused, every later request fails the same way at once.
        self._auth_failure: LfsAuthenticationError | None = None
        self._sessions: list[requests.Session] = []

    # -- the ObjectStore interface -------------------------------------------
    def prepare(self, operation: Operation, sizes: Mapping[str, Sequence[int]]) -> None:
        """Announce objects about to move (oid -> its possible sizes, most likely first)."""
        pending = self._pending[operation]
        with self._lock:
            for oid, candidates in sizes.items():
                if not is_valid_oid(oid):
                    raise ValueError(f"invalid object id {oid!r}")
                if candidates:
                    pending.sizes[oid] = list(dict.fromkeys(candidates))

    def has(self, oid: str) -> bool:
        return oid in self.batch_has([oid])

    def batch_has(self, oids: Iterable[str]) -> set[str]:
        """Objects announced for upload are present when the server wants no upload of them;
        others when it offers to send them."""
        wanted = list(dict.fromkeys(oids))
        present = set()
        for oid in wanted:
            if oid in self._pending["upload"].sizes:
                answer = self._answer("upload", oid)
                if answer.error is None and "upload" not in answer.actions:
                    present.add(oid)
            else:
                answer = self._answer("download", oid)
                if answer.error is None:
                    present.add(oid)
        return present

    def get(self, oid: str, destination: Path) -> None:
        answer = self._answer("download", oid)
        attempt = refreshed = 0
        while True:
            self._raise_object_error(answer)
            try:
                self._download(oid, answer, answer.actions["download"], destination)
                break
            except _ActionRefused:
                if refreshed:
                    raise LfsAuthenticationError(
                        self.url, "the download was refused, twice", oid=oid
                    ) from None
                refreshed += 1
                answer = self._answer("download", oid, refresh=True)
            except _BrokenOff as exc:
                if attempt >= self.settings.max_retries:
                    raise StoreUnavailableError(
                        self.url, f"the download broke off: {exc.reason}", oid=oid
                    ) from None
                self._sleep(self._backoff(attempt))
                attempt += 1
        self._forget("download", oid)

    def put(self, oid: str, source: Path) -> bool:
        size = source.stat().st_size
        limit = self.settings.max_object_size
        if limit is not None and size > limit:
            raise LfsObjectTooLargeError(self.url, oid, size, limit)
        pending = self._pending["upload"]
        with self._lock:
            if pending.sizes.get(oid) != [size]:
                pending.sizes[oid] = [size]
                pending.answers.pop(oid, None)
        answer = self._answer("upload", oid)
        for attempt in range(2):
            self._raise_object_error(answer)
            upload = answer.actions.get("upload")
            if upload is None:
                self._forget("upload", oid)
                return False  # the server has it
            try:
                self._upload(oid, size, source, upload, answer.authenticated)
                verify = answer.actions.get("verify")
                if verify is not None:
                    self._verify(oid, size, verify, answer.authenticated)
            except _ActionRefused:
                if attempt:
                    raise LfsAuthenticationError(
                        self.url, "the upload was refused twice", oid=oid
                    ) from None
                answer = self._answer("upload", oid, refresh=True)
                continue
            break
        self._forget("upload", oid)
        return True

    def list(self) -> Iterator[str]:
        raise StoreError(self.url, "an LFS server cannot list its objects")

    def close(self) -> None:
        """Close every thread's connections."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    # -- batches -------------------------------------------------------------
    def _answer(self, operation: Operation, oid: str, *, refresh: bool = False) -> ObjectAnswer:
        """The server's current answer for ``oid``, batching it with other announced objects."""
        pending = self._pending[operation]
        while True:
            with self._lock:
                if refresh:
                    pending.answers.pop(oid, None)
                    refresh = False
                answer = pending.answers.get(oid)
                if answer is not None and not self._stale(answer):
                    return answer
                event = pending.in_flight.get(oid)
                if event is None:
                    if oid not in pending.sizes:
                        raise StoreError(
                            self.url, "its size is unknown, and the LFS API needs it", oid=oid
                        )
                    chunk = self._take_chunk(pending, oid)
                    event = threading.Event()
                    for member in chunk:
                        pending.in_flight[member] = event
                    mine = True
                else:
                    mine = False
            if not mine:
                event.wait()
                continue
            try:
                answers = self._batch_with_size_fallback(
                    operation, chunk, {o: pending.sizes[o] for o in chunk}
                )
            finally:
                with self._lock:
                    for member in chunk:
                        pending.in_flight.pop(member, None)
                    event.set()
            with self._lock:
                pending.answers.update(answers)
            if oid in answers:
                return answers[oid]

    def _stale(self, answer: ObjectAnswer) -> bool:
        return any(action.expires_within(EXPIRY_MARGIN) for action in answer.actions.values())

    def _take_chunk(self, pending: _Pending, oid: str) -> list[str]:
        """``oid`` and up to 99 other announced objects with no fresh answer and no request."""
        chunk = [oid]
        for other in pending.sizes:
            if len(chunk) == MAX_BATCH:
                break
            if other == oid or other in pending.in_flight:
                continue
            answer = pending.answers.get(other)
            if answer is None or self._stale(answer):
                chunk.append(other)
        return chunk

    def _batch_with_size_fallback(
        self, operation: Operation, oids: list[str], sizes: Mapping[str, list[int]]
    ) -> dict[str, ObjectAnswer]:
        """Answers for ``oids``; an object refused as invalid (422) is asked again with its
        next possible size, as the size of a download is not always known exactly."""
        tried = dict.fromkeys(oids, 0)
        answers: dict[str, ObjectAnswer] = {}
        todo = list(oids)
        while todo:
            got = self._batch(operation, [(oid, sizes[oid][tried[oid]]) for oid in todo])
            todo = []
            for oid, answer in got.items():
                error = answer.error
                if error is not None and error.code == 422 and tried[oid] + 1 < len(sizes[oid]):
                    tried[oid] += 1
                    todo.append(oid)
                else:
                    answers[oid] = answer
        return answers

    def _batch(
        self, operation: Operation, objects: list[tuple[str, int]]
    ) -> dict[str, ObjectAnswer]:
        """One batch request (split further if the server finds it too large)."""
        headers = dict(_JSON_HEADERS)
        url = self.endpoint.url
        if self._ssh is not None:
            auth = self._ssh.authenticate(operation)
            headers.update(auth.headers)
            url = (auth.href or url).rstrip("/")
        url += "/objects/batch"
        requested = dict(objects)
        body = batch_request(operation, objects, self.settings.ref)
        sent_at = time.time()
        response = self._request(
            "POST", url, what=f"the {operation} batch request", headers=headers, body=body
        )
        with _finished(response):
            status = response.status_code
            content = _read_bounded(response, MAX_RESPONSE_BYTES)
        if status == 413 and len(objects) > 1:
            half = len(objects) // 2
            return {
                **self._batch(operation, objects[:half]),
                **self._batch(operation, objects[half:]),
            }
        if status in (404, 422) and operation == "download":
            # The spec's 404 is "no such repository", but servers (giftless) also answer
            # 404 when none of the objects exist and 422 when none has the right size:
            # report them per object, which is never worse than "not there".
            message = parse_error_message(content) or "not found"
            return {
                oid: ObjectAnswer(oid, size, error=ObjectError(status, message))
                for oid, size in objects
            }
        if status != 200:
            raise LfsRequestError(
                self.url, f"the {operation} batch request", status, parse_error_message(content)
            )
        answers = parse_batch_response(self.url, content, operation, requested, sent_at)
        for oid, size in objects:
            if oid not in answers:
                answers[oid] = ObjectAnswer(
                    oid, size, error=ObjectError(0, "the server did not answer for it")
                )
        return answers

    def _raise_object_error(self, answer: ObjectAnswer) -> None:
        error = answer.error
        if error is None:
            return
        if error.code == 404:
            raise RemoteObjectMissingError(self.url, answer.oid)
        raise LfsObjectError(self.url, answer.oid, error.code, error.message)

    def _forget(self, operation: Operation, oid: str) -> None:
        """Drop the used answer; after an upload, remember that the server has the object."""
        pending = self._pending[operation]
        with self._lock:
            answer = pending.answers.pop(oid, None)
            if operation == "upload" and answer is not None:
                pending.answers[oid] = ObjectAnswer(oid, answer.size)

    # -- transfers -----------------------------------------------------------
    def _download(self, oid: str, answer: ObjectAnswer, action: Action, destination: Path) -> None:
        response = self._request(
            "GET",
            action.href,
            what="the download",
            oid=oid,
            headers=action.headers,
            credentials=not answer.authenticated,
            action=True,
        )
        with _finished(response):
            if response.status_code == 404:
                raise RemoteObjectMissingError(self.url, oid)
            if response.status_code != 200:
                raise LfsRequestError(
                    self.url,
                    f"the download from {redact_url(action.href)}",
                    response.status_code,
                    parse_error_message(_read_bounded(response, _ERROR_BODY_LIMIT)),
                    oid=oid,
                )
            received = 0
            try:
                with open(destination, "wb") as file:
                    for chunk in response.iter_content(COPY_CHUNK):
                        received += len(chunk)
                        if received > answer.size:
                            raise LfsDownloadSizeError(
                                self.url,
                                f"the server sent more than the {answer.size} bytes it "
                                "announced; cut off",
                                oid=oid,
                            )
                        file.write(chunk)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                raise _BrokenOff(_network_reason(exc)) from None
        if received != answer.size:
            raise _BrokenOff(f"it ended after {received} of {answer.size} bytes")

    def _upload(
        self, oid: str, size: int, source: Path, action: Action, authenticated: bool
    ) -> None:
        def body() -> _HashingReader:
            return _HashingReader(source, oid, size)

        response = self._request(
            "PUT",
            action.href,
            what="the upload",
            oid=oid,
            headers={"Content-Type": "application/octet-stream", **action.headers},
            body=body,
            credentials=not authenticated,
            action=True,
        )
        with _finished(response):
            if not 200 <= response.status_code < 300:
                raise LfsRequestError(
                    self.url,
                    f"the upload to {redact_url(action.href)}",
                    response.status_code,
                    parse_error_message(_read_bounded(response, _ERROR_BODY_LIMIT)),
                    oid=oid,
                )

    def _verify(self, oid: str, size: int, action: Action, authenticated: bool) -> None:
        response = self._request(
            "POST",
            action.href,
            what="the verify request",
            oid=oid,
            headers={**_JSON_HEADERS, **action.headers},
            body=verify_request(oid, size),
            credentials=not authenticated,
            action=True,
        )
        with _finished(response):
            if response.status_code != 200:
                raise LfsRequestError(
                    self.url,
                    "the server's check of the uploaded object",
                    response.status_code,
                    parse_error_message(_read_bounded(response, _ERROR_BODY_LIMIT)),
                    oid=oid,
                )

    # -- HTTP ------------------------------------------------------------------
    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._threads, "session", None)
        if session is None:
            session = requests.Session()
            adapter = _SizedAdapter(pool_connections=4, pool_maxsize=4, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            session.headers["User-Agent"] = _USER_AGENT
            session.max_redirects = 5
            self._threads.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _may_send_credentials(self, url: str) -> bool:
        """Only to the endpoint's own origin; over http only if the user chose that endpoint."""
        if _origin(url) != _origin(self.endpoint.url):
            return False
        return url.startswith("https://") or self.endpoint.user_configured

    def _request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str],
        body: bytes | Callable[[], _HashingReader] | None = None,
        oid: str | None = None,
        credentials: bool = True,
        action: bool = False,
    ) -> requests.Response:
        """Send one request (its response streamed), retrying what may pass and
        authenticating on 401.

        ``credentials``: the endpoint's credential may be added (never to another
        origin, nor over http to an endpoint the user did not configure);
        ``action``: the URL came from the server, which may refuse a stale one.
        """
        options = self._http_options(url)
        has_own_authorization = any(name.lower() == "authorization" for name in headers)
        authenticate = credentials and not has_own_authorization and self._may_send_credentials(url)
        attempt = 0
        while True:
            sent = self._current_credential() if authenticate else None
            data = body() if callable(body) else body
            try:
                response = self._session().request(
                    method,
                    url,
                    headers={**dict(options.extra_headers), **headers},
                    data=data,
                    auth=_Credentials(sent),
                    stream=True,
                    timeout=(self.settings.connect_timeout, self.settings.activity_timeout),
                    verify=options.verify,
                )
            except requests.exceptions.SSLError as exc:
                raise StoreUnavailableError(
                    self.url, f"{what}: TLS failed ({_network_reason(exc)})", oid=oid
                ) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.settings.max_retries:
                    raise StoreUnavailableError(
                        self.url, f"{what} to {redact_url(url)}: {_network_reason(exc)}", oid=oid
                    ) from None
                self._sleep(self._backoff(attempt))
                attempt += 1
                continue
            finally:
                if isinstance(data, _HashingReader):
                    data.close()
            status = response.status_code
            if status in (401, 403):
                message = parse_error_message(_read_bounded(response, _ERROR_BODY_LIMIT))
                response.close()
                if authenticate:
                    self._refused(sent, status, message, what)
                    continue
                if action and (has_own_authorization or not credentials):
                    raise _ActionRefused()
                raise LfsAuthenticationError(self.url, self._why_no_credentials(url, what, status))
            if status in _RETRYABLE_STATUS and attempt < self.settings.max_retries:
                wait = parse_retry_after(response.headers.get("Retry-After"))
                response.close()
                if wait is not None and wait > self.settings.max_retry_after:
                    raise LfsRequestError(
                        self.url,
                        f"{what} (the server asks to wait {wait:.0f} s)",
                        status,
                        "",
                        oid=oid,
                    )
                self._sleep(self._backoff(attempt) if wait is None else wait)
                attempt += 1
                continue
            if sent is not None and 200 <= status < 300:
                self._approve(sent)
            return response

    def _why_no_credentials(self, url: str, what: str, status: int) -> str:
        if _origin(url) != _origin(self.endpoint.url):
            return (
                f"{what} was refused with HTTP {status} by {redact_url(url)}, "
                "and credentials go only to the LFS endpoint's own host"
            )
        return (
            f"{what} was refused with HTTP {status}, and credentials are not sent over "
            f"plain http to {redact_url(url)}, which only a committed file names; "
            "set it in your own git config (`git config remote.<remote>.lfsurl <url>`) "
            "to allow that"
        )

    def _backoff(self, attempt: int) -> float:
        delay = min(self.settings.max_retry_delay, _BACKOFF_START * 2**attempt)
        return delay * random.uniform(0.5, 1.0)

    def _current_credential(self) -> Credential | None:
        with self._auth_lock:
            if self._auth_failure is not None:
                raise self._auth_failure
            return self._credential

    def _refused(self, sent: Credential | None, status: int, message: str, what: str) -> None:
        """After a 401/403: get a credential to try, or give up (rejecting the one refused)."""
        with self._auth_lock:
            if self._auth_failure is not None:
                raise self._auth_failure
            if sent is None and self._credential is not None:
                return  # another thread got one meanwhile: try that
            if sent is not None or status == 403:
                if sent is not None and sent is self._credential:
                    self._credential = None
                    if self._credentials is not None and self.endpoint.password is None:
                        self._credentials.reject(sent)
                said = f": {message}" if message else ""
                self._auth_failure = LfsAuthenticationError(
                    self.url,
                    f"{what} was refused with HTTP {status}{said}",
                )
                raise self._auth_failure
            if self.endpoint.password is not None:
                self._credential = Credential(
                    (
                        ("username", self.endpoint.username or ""),
                        ("password", self.endpoint.password),
                    )
                )
            elif self._credentials is None:
                raise LfsAuthenticationError(self.url, f"{what} needs credentials (HTTP 401)")
            else:
                self._credential = self._credentials.fill(self.endpoint.url)

    def _approve(self, credential: Credential) -> None:
        with self._auth_lock:
            if self._credential_approved or credential is not self._credential:
                return
            self._credential_approved = True
        if self._credentials is not None and self.endpoint.password is None:
            self._credentials.approve(credential)


@contextmanager
def _finished(response: requests.Response) -> Iterator[requests.Response]:
    """Drain what is left of a small response before closing it, so its connection goes
    back to the pool for the next request instead of being dropped."""
    try:
        yield response
        drained = 0
        while chunk := response.raw.read(64 << 10):
            drained += len(chunk)
            if drained > _ERROR_BODY_LIMIT:
                return  # not worth reading: the connection is dropped instead
        response.raw.release_conn()
    finally:
        response.close()


def _read_bounded(response: requests.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed response's body (more means a broken server)."""
    data = bytearray()
    for chunk in response.iter_content(64 << 10):
        data += chunk
        if len(data) > limit:
            break
    return bytes(data)
