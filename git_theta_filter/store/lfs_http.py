"""HTTP for the Git LFS store: sessions per thread, retries, credentials, bounded reads.

``store/lfs.py`` decides what to ask the server; :class:`LfsHttp` sends it:

* **Connections.** Each thread keeps one ``requests`` session, so its
  requests reuse kept-alive connections.
* **Retries.** Connection failures, 408, 429 and 5xx are sent again up to
  ``lfs.transfer.maxretries`` times, after the wait ``Retry-After`` asks for
  (refused beyond ``max_retry_after``) or an exponential backoff with jitter
  capped at ``lfs.transfer.maxretrydelay``.
* **Credentials.** A request first goes without them. On 401 the credential
  comes from the endpoint URL or ``git credential fill``; it is approved after
  the first success and rejected when refused. Credentials go only to the
  endpoint's own origin, and over plain http only to an endpoint the user
  configured.
* **Bounds.** Small responses are read to at most a fixed size; upload bodies
  hash what they send and withhold the last block unless it matches the oid.
"""

from __future__ import annotations

import base64
import hashlib
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.auth
import urllib3.exceptions

from .base import StoreUnavailableError
from .lfs_endpoint import LfsEndpoint
from .lfs_protocol import MEDIA_TYPE, Credential, parse_error_message, parse_retry_after, redact_url
from .local import COPY_CHUNK
from .object_format import ObjectFormatError

__all__ = [
    "CredentialSource",
    "HttpOptions",
    "LfsSettings",
    "LfsRequestError",
    "LfsAuthenticationError",
    "ActionRefused",
    "HashingReader",
    "LfsHttp",
    "JSON_HEADERS",
    "ERROR_BODY_LIMIT",
    "finished",
    "read_bounded",
    "network_reason",
]

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
JSON_HEADERS = {"Accept": MEDIA_TYPE, "Content-Type": MEDIA_TYPE}
_USER_AGENT = "git-theta-filter (git-lfs batch API)"
_BACKOFF_START = 0.25
_MAX_REDIRECTS = 5
# Error bodies and other small answers are read up to this much, no more.
ERROR_BODY_LIMIT = 64 << 10


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


class ActionRefused(Exception):
    """An action href answered 401/403: its pre-signed authorization has gone stale."""


class _SizedAdapter(requests.adapters.HTTPAdapter):
    """Sends request bodies in 1 MiB blocks instead of http.client's 16 KiB."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = COPY_CHUNK
        super().init_poolmanager(*args, **kwargs)


class _Session(requests.Session):
    """A thread's session. Its redirects send no credential to a host the server picks:
    requests drops Authorization on such a hop but would add that host's ``~/.netrc``
    entry, and keep the user's ``http.extraHeader`` values (tokens, often)."""

    # The names of the user's extra headers on the request being sent, set for each.
    user_headers: tuple[str, ...] = ()

    def rebuild_auth(
        self, prepared_request: requests.PreparedRequest, response: requests.Response
    ) -> None:
        previous = response.request.url
        assert previous is not None and prepared_request.url is not None
        try:
            strip = self.should_strip_auth(previous, prepared_request.url)
        except ValueError:  # a port out of range: requests refuses to send it next
            strip = True
        if strip:
            for name in ("Authorization", *self.user_headers):
                prepared_request.headers.pop(name, None)


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


class HashingReader:
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


def network_reason(exc: BaseException) -> str:
    """Why a connection failed, without the URL (requests' messages include its query)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


class LfsHttp:
    """Sends the LFS store's requests; safe to use from several threads."""

    def __init__(
        self,
        endpoint: LfsEndpoint,
        url: str,
        *,
        settings: LfsSettings,
        credentials: CredentialSource | None,
        http_options: Callable[[str], HttpOptions],
        sleep: Callable[[float], None],
    ) -> None:
        self.endpoint = endpoint
        self.url = url  # the store's name in messages
        self.settings = settings
        self._credentials = credentials
        self._http_options = http_options
        self._sleep = sleep
        self._threads = threading.local()
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []
        self._auth_lock = threading.Lock()
        self._credential: Credential | None = None
        self._credential_approved = False
        # Once credentials are refused, every later request fails the same way at once.
        self._auth_failure: LfsAuthenticationError | None = None

    def close(self) -> None:
        """Close every thread's connections."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def _session(self) -> _Session:
        session: _Session | None = getattr(self._threads, "session", None)
        if session is None:
            session = _Session()
            adapter = _SizedAdapter(pool_connections=4, pool_maxsize=4, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            session.headers["User-Agent"] = _USER_AGENT
            session.max_redirects = _MAX_REDIRECTS
            self._threads.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _may_send_credentials(self, url: str) -> bool:
        """Only to the endpoint's own origin; over http only if the user chose that endpoint."""
        if origin(url) != origin(self.endpoint.url):
            return False
        return url.startswith("https://") or self.endpoint.user_configured

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str],
        body: bytes | Callable[[], HashingReader] | None = None,
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
            session = self._session()
            session.user_headers = tuple(name for name, _ in options.extra_headers)
            try:
                response = session.request(
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
                    self.url, f"{what}: TLS failed ({network_reason(exc)})", oid=oid
                ) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.settings.max_retries:
                    raise StoreUnavailableError(
                        self.url, f"{what} to {redact_url(url)}: {network_reason(exc)}", oid=oid
                    ) from None
                self._sleep(self.backoff(attempt))
                attempt += 1
                continue
            except requests.TooManyRedirects:
                raise StoreUnavailableError(
                    self.url,
                    f"{what} to {redact_url(url)}: more than {_MAX_REDIRECTS} redirects",
                    oid=oid,
                ) from None
            except (requests.RequestException, urllib3.exceptions.HTTPError):
                # A server's href, or a redirect, to a URL requests cannot send (file://,
                # a port out of range, an empty label in the host).
                raise StoreUnavailableError(
                    self.url,
                    f"{what} to {redact_url(url)}: the URL, or one it redirects to, "
                    "is no http(s) URL that can be sent to",
                    oid=oid,
                ) from None
            finally:
                if isinstance(data, HashingReader):
                    data.close()
            status = response.status_code
            if status in (401, 403):
                message = parse_error_message(read_bounded(response, ERROR_BODY_LIMIT))
                response.close()
                if authenticate:
                    self._refused(sent, status, message, what)
                    continue
                if action and (has_own_authorization or not credentials):
                    raise ActionRefused()
                raise LfsAuthenticationError(self.url, self._why_no_credentials(url, what, status))
            if status in RETRYABLE_STATUS and attempt < self.settings.max_retries:
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
                self._sleep(self.backoff(attempt) if wait is None else wait)
                attempt += 1
                continue
            if sent is not None and 200 <= status < 300:
                self._approve(sent)
            return response

    def _why_no_credentials(self, url: str, what: str, status: int) -> str:
        if origin(url) != origin(self.endpoint.url):
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

    def backoff(self, attempt: int) -> float:
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
def finished(response: requests.Response) -> Iterator[requests.Response]:
    """Drain what is left of a small response before closing it, so its connection goes
    back to the pool for the next request instead of being dropped."""
    try:
        yield response
        drained = 0
        while chunk := response.raw.read(64 << 10):
            drained += len(chunk)
            if drained > ERROR_BODY_LIMIT:
                return  # not worth reading: the connection is dropped instead
        response.raw.release_conn()
    finally:
        response.close()


def read_bounded(response: requests.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed response's body (more means a broken server)."""
    data = bytearray()
    for chunk in response.iter_content(64 << 10):
        data += chunk
        if len(data) > limit:
            break
    return bytes(data)
