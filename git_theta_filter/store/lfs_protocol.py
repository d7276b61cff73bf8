"""The Git LFS batch API on the wire: request bodies, and strict parsing of what servers send.

Pure functions over bytes and dicts; no network, no git. ``store/lfs.py``
does the HTTP. The exchange, as ``docs/lfs-wire.md`` specifies it::

    POST <endpoint>/objects/batch
    Accept: application/vnd.git-lfs+json
    Content-Type: application/vnd.git-lfs+json

    {"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
     "objects": [{"oid": "<sha256>", "size": <bytes>}, ...]}        (at most 100)

and the answer names, per object, either ``actions`` (``upload`` and
``verify``, or ``download``: an ``href``, ``header`` and an expiry), no
actions (an upload the server already has), or an ``error`` with a code
(404 missing, 410 removed, 422 invalid).

Everything a server sends is untrusted: a response is size-capped, every
field is type-checked, an href must be ``http(s)``, header names and values
may not carry line breaks, and the messages it contains are made printable
before they reach an error message.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard
from urllib.parse import urlsplit, urlunsplit

from ..terminal import printable as escape_for_terminal
from .base import StoreUnavailableError
from .object_format import is_valid_oid

__all__ = [
    "MEDIA_TYPE",
    "MAX_BATCH",
    "MAX_RESPONSE_BYTES",
    "Operation",
    "Credential",
    "Action",
    "ObjectError",
    "ObjectAnswer",
    "LfsProtocolError",
    "SshAuthentication",
    "batch_request",
    "parse_expiry",
    "parse_batch_response",
    "parse_error_message",
    "parse_retry_after",
    "parse_ssh_authenticate",
    "verify_request",
    "printable",
    "redact_url",
]

MEDIA_TYPE = "application/vnd.git-lfs+json"
# The batch API's own limit on objects per request (servers may answer 413 above it).
MAX_BATCH = 100
# A batch response for 100 objects is some tens of KB; anything this large is not one.
MAX_RESPONSE_BYTES = 16 << 20
_MAX_INTEGER_DIGITS = 20
# The spec's bounds for expires_in.
_MAX_EXPIRES_IN = 2147483647
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_BAD_HEADER_VALUE = re.compile(r"[\x00\r\n]")
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e][\t\x20-\x7e]*)?\Z")
_MESSAGE_LIMIT = 300

Operation = Literal["upload", "download"]


class LfsProtocolError(StoreUnavailableError):
    """The server's answer does not follow the batch API; nothing in it is used."""

    def __init__(self, url: str, what: str) -> None:
        super().__init__(url, f"the LFS server sent an invalid answer: {what}")
        self.what = what


def printable(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    """Server text made safe for a terminal: control characters escaped, length bounded."""
    return escape_for_terminal(text, limit)


def redact_url(url: str) -> str:
    """A URL fit for messages: no user name or password, no query (signed URLs carry
    secrets there) and no fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return printable(urlunsplit((parts.scheme, netloc, parts.path, "", "")))


@dataclass(frozen=True, repr=False)
class Credential:
    """What ``git credential fill`` printed, passed back as is to ``approve``/``reject``."""

    attributes: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        for name, value in self.attributes:
            if name == key:
                return value
        return None

    @property
    def username(self) -> str:
        return self.get("username") or ""

    @property
    def password(self) -> str:
        return self.get("password") or ""

    def __repr__(self) -> str:
        return f"Credential(username={self.username!r}, password=<hidden>)"


@dataclass(frozen=True)
class Action:
    """Where and how to move one object: an href, headers to send, and when it stops working."""

    href: str
    headers: Mapping[str, str] = field(default_factory=dict)
    # Seconds since the epoch; None when the server set no expiry.
    expires_at: float | None = None

    def expires_within(self, seconds: float, now: float | None = None) -> bool:
        if self.expires_at is None:
            return False
        return self.expires_at - (time.time() if now is None else now) <= seconds


@dataclass(frozen=True)
class ObjectError:
    """The server's per-object refusal: 404 missing, 410 removed, 422 invalid, or another code."""

    code: int
    message: str


@dataclass(frozen=True)
class ObjectAnswer:
    """The server's answer for one object of a batch."""

    oid: str
    size: int
    actions: Mapping[str, Action] = field(default_factory=dict)
    error: ObjectError | None = None
    # True when the actions carry their own authorization (no credentials are to be added).
    authenticated: bool = False


def batch_request(
    operation: Operation, objects: Sequence[tuple[str, int]], ref: str | None = None
) -> bytes:
    """The JSON body of a batch request for ``objects`` (oid, size), at most :data:`MAX_BATCH`."""
    if not 0 < len(objects) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH} objects, not {len(objects)}")
    body: dict[str, Any] = {
        "operation": operation,
        "transfers": ["basic"],
        "hash_algo": "sha256",
        "objects": [{"oid": oid, "size": size} for oid, size in objects],
    }
    if ref is not None:
        body["ref"] = {"name": ref}
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def verify_request(oid: str, size: int) -> bytes:
    """The JSON body of the POST to a ``verify`` action."""
    return json.dumps({"oid": oid, "size": size}, separators=(",", ":")).encode("ascii")


class _LongInteger(ValueError):
    pass


def _bounded_int(digits: str) -> int:
    """An integer of the answer; sizes and times have at most 20 digits. Converting n digits
    costs n**2, and Python's own limit may be off (PYTHONINTMAXSTRDIGITS=0)."""
    if len(digits.lstrip("-")) > _MAX_INTEGER_DIGITS:
        raise _LongInteger(f"an integer of more than {_MAX_INTEGER_DIGITS} digits")
    return int(digits)


def _load_json(url: str, body: bytes) -> Any:
    if len(body) > MAX_RESPONSE_BYTES:
        raise LfsProtocolError(url, f"more than {MAX_RESPONSE_BYTES} bytes")
    try:
        return json.loads(body, parse_int=_bounded_int)
    except _LongInteger as exc:
        raise LfsProtocolError(url, str(exc)) from None
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or past Python's digit limit
        raise LfsProtocolError(url, "not JSON") from None


def _is_int(value: object) -> TypeGuard[int]:
    return type(value) is int


def parse_expiry(url: str, data: Mapping[str, Any], received_at: float, what: str) -> float | None:
    """``expires_in`` (preferred, as the spec says) or ``expires_at`` as seconds since the epoch."""
    expires_in = data.get("expires_in")
    if expires_in is not None and expires_in != 0:
        if not _is_int(expires_in) or abs(expires_in) > _MAX_EXPIRES_IN:
            raise LfsProtocolError(url, f"{what}: expires_in is not a whole number of seconds")
        return received_at + expires_in
    expires_at = data.get("expires_at")
    if expires_at is None or expires_at == "" or expires_at == "0001-01-01T00:00:00Z":
        return None  # Go's zero time: what git-lfs-authenticate sends for "no expiry"
    if not isinstance(expires_at, str):
        raise LfsProtocolError(url, f"{what}: expires_at is not a string")
    try:
        moment = datetime.datetime.fromisoformat(expires_at)
    except ValueError:
        raise LfsProtocolError(
            url, f"{what}: expires_at {printable(expires_at, 40)!r} is not RFC 3339"
        ) from None
    if moment.tzinfo is None:
        raise LfsProtocolError(url, f"{what}: expires_at has no time zone")
    return moment.timestamp()


def _parse_headers(url: str, raw: object, what: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise LfsProtocolError(url, f"{what}: header is not an object")
    headers = {}
    for name, value in raw.items():
        if not isinstance(value, str) or not _HEADER_NAME.match(name):
            raise LfsProtocolError(url, f"{what}: header {printable(name, 40)!r} is not valid")
        if _BAD_HEADER_VALUE.search(value):
            # A line break in a value would smuggle another header into the request.
            raise LfsProtocolError(url, f"{what}: header {name!r} has a line break")
        if not _HEADER_VALUE.match(value):
            # requests refuses leading white space, http.client anything beyond Latin-1.
            raise LfsProtocolError(
                url, f"{what}: header {name!r} is not printable ASCII without leading space"
            )
        headers[name] = value
    return headers


def _parse_href(url: str, raw: object, what: str) -> str:
    if not isinstance(raw, str):
        raise LfsProtocolError(url, f"{what}: href is not a string")
    try:
        parts = urlsplit(raw)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise LfsProtocolError(url, f"{what}: href {redact_url(raw)!r} is not an http(s) URL")
    if _BAD_HEADER_VALUE.search(raw) or " " in raw:
        raise LfsProtocolError(url, f"{what}: href has spaces or line breaks")
    return raw


def _parse_action(url: str, raw: object, received_at: float, what: str) -> Action:
    if not isinstance(raw, dict):
        raise LfsProtocolError(url, f"{what} is not an object")
    return Action(
        href=_parse_href(url, raw.get("href"), what),
        headers=_parse_headers(url, raw.get("header"), what),
        expires_at=parse_expiry(url, raw, received_at, what),
    )


def _parse_object(url: str, raw: object, operation: Operation, received_at: float) -> ObjectAnswer:
    if not isinstance(raw, dict):
        raise LfsProtocolError(url, "an entry of objects is not an object")
    oid, size = raw.get("oid"), raw.get("size")
    if not isinstance(oid, str) or not is_valid_oid(oid):
        raise LfsProtocolError(url, f"object id {printable(str(oid), 80)!r} is not a sha256")
    if not _is_int(size) or size < 0:
        raise LfsProtocolError(url, f"object {oid}: size is not a whole number")
    error = raw.get("error")
    if error is not None:
        if not isinstance(error, dict) or not _is_int(error.get("code")):
            raise LfsProtocolError(url, f"object {oid}: error has no numeric code")
        message = error.get("message")
        return ObjectAnswer(
            oid,
            size,
            error=ObjectError(
                error["code"], printable(message if isinstance(message, str) else "")
            ),
        )
    raw_actions = raw.get("actions") or {}
    if not isinstance(raw_actions, dict):
        raise LfsProtocolError(url, f"object {oid}: actions is not an object")
    allowed = {"upload", "verify"} if operation == "upload" else {"download"}
    actions = {
        name: _parse_action(url, value, received_at, f"object {oid}: {name} action")
        for name, value in raw_actions.items()
        if name in allowed
    }
    if operation == "download" and "download" not in actions:
        raise LfsProtocolError(url, f"object {oid}: neither a download action nor an error")
    if operation == "upload" and "verify" in actions and "upload" not in actions:
        raise LfsProtocolError(url, f"object {oid}: a verify action without an upload action")
    authenticated = raw.get("authenticated", False)
    if not isinstance(authenticated, bool):
        raise LfsProtocolError(url, f"object {oid}: authenticated is not true or false")
    return ObjectAnswer(oid, size, actions=actions, authenticated=authenticated)


def parse_batch_response(
    url: str,
    body: bytes,
    operation: Operation,
    requested: Mapping[str, int],
    received_at: float | None = None,
) -> dict[str, ObjectAnswer]:
    """The answer for each requested oid, checked against what was asked.

    An object the server did not answer for is absent from the result; the
    caller reports it. An answer for an object that was not asked about, or
    for a different size, is a protocol error.
    """
    received_at = time.time() if received_at is None else received_at
    data = _load_json(url, body)
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        raise LfsProtocolError(url, "no list of objects")
    transfer = data.get("transfer", "basic")
    if transfer not in (None, "basic"):
        raise LfsProtocolError(url, f"transfer {printable(str(transfer), 40)!r} was not offered")
    hash_algo = data.get("hash_algo", "sha256")
    if hash_algo not in (None, "sha256"):
        raise LfsProtocolError(
            url, f"the server names objects by {printable(str(hash_algo), 40)!r}, not sha256"
        )
    answers: dict[str, ObjectAnswer] = {}
    for raw in data["objects"]:
        answer = _parse_object(url, raw, operation, received_at)
        if answer.oid not in requested:
            raise LfsProtocolError(url, f"an answer for object {answer.oid}, which was not asked")
        if answer.error is None and answer.size != requested[answer.oid]:
            raise LfsProtocolError(
                url,
                f"object {answer.oid} is {answer.size} bytes in the answer, "
                f"{requested[answer.oid]} in the request",
            )
        answers[answer.oid] = answer
    return answers


def parse_error_message(body: bytes) -> str:
    """The ``message`` of an error response (printable), or "" when there is none."""
    try:
        data = json.loads(body[:MAX_RESPONSE_BYTES], parse_int=_bounded_int)
    except (ValueError, RecursionError):
        return ""
    message = data.get("message") if isinstance(data, dict) else None
    return printable(message) if isinstance(message, str) else ""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        # float() of any number of digits never fails (int() of 5,000 did, and float()
        # of a 400-digit int); capped at expires_in's bound, it stays finite.
        return min(float(value), _MAX_EXPIRES_IN)
    import email.utils  # only for an HTTP date, which few servers send

    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # OverflowError: a huge year
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class SshAuthentication:
    """What ``git-lfs-authenticate`` printed: an optional href and headers for the batch API."""

    href: str | None
    headers: Mapping[str, str]
    expires_at: float | None

    def expires_within(self, seconds: float, now: float | None = None) -> bool:
        if self.expires_at is None:
            return False
        return self.expires_at - (time.time() if now is None else now) <= seconds


def parse_ssh_authenticate(
    url: str, output: bytes, received_at: float | None = None
) -> SshAuthentication:
    """Parse the JSON that ``ssh <host> git-lfs-authenticate <path> <operation>`` prints."""
    received_at = time.time() if received_at is None else received_at
    data = _load_json(url, output)
    if not isinstance(data, dict):
        raise LfsProtocolError(url, "git-lfs-authenticate did not print a JSON object")
    href = data.get("href")
    return SshAuthentication(
        href=None if href in (None, "") else _parse_href(url, href, "git-lfs-authenticate"),
        headers=_parse_headers(url, data.get("header"), "git-lfs-authenticate"),
        expires_at=parse_expiry(url, data, received_at, "git-lfs-authenticate"),
    )
