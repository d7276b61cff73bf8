"""A store behind a Git LFS server: the batch API with the ``basic`` transfer (``lfs+https://…``).

An object is an LFS object: its oid is the sha256 of the bytes uploaded, so
git-lfs itself can download what this store uploads, and the other way round.
The wire format is in ``docs/lfs-wire.md``; ``lfs_protocol.py`` builds and
checks the JSON, ``lfs_http.py`` sends the requests (retries, credentials,
connections), and this module decides what to ask:

* **Batches.** The transfer layer announces the objects it is about to move
  (:meth:`LfsStore.prepare`); their actions are asked for at most 100 per
  batch request, when a worker first needs one of them, so a long transfer
  never works from actions that expired while it waited.
* **Expiry.** An action is used only while it has more than
  :data:`EXPIRY_MARGIN` seconds left; otherwise the batch is asked again. An
  action refused with 401/403 is asked for once more too.
* **Sizes.** The batch API needs each object's size. A download may know
  several possible sizes (``object_sizes.py``); a per-object 422 moves on to
  the next.
* **Checks.** An upload withholds its last block unless the bytes hash to the
  oid. A download goes into the caller's ``ObjectSink``, which cuts it off
  past the object's size (``sink.py``), and must end at the size the server
  confirmed; the caller checks its sha256 (``transfer.py``).
"""

from __future__ import annotations

import builtins  # LfsStore.list shadows the builtin in the annotations after it.
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .base import ObjectStore, RemoteObjectMissingError, StoreError, StoreUnavailableError
from .lfs_endpoint import LfsEndpoint
from .lfs_http import (
    ERROR_BODY_LIMIT,
    JSON_HEADERS,
    ActionRefused,
    CredentialSource,
    HashingReader,
    HttpOptions,
    LfsAuthenticationError,
    LfsHttp,
    LfsRequestError,
    LfsSettings,
    finished,
    network_reason,
    read_bounded,
)
from .lfs_protocol import (
    MAX_BATCH,
    MAX_RESPONSE_BYTES,
    Action,
    ObjectAnswer,
    ObjectError,
    Operation,
    batch_request,
    parse_batch_response,
    parse_error_message,
    redact_url,
    verify_request,
)
from .lfs_ssh import SshAuthenticator
from .local import COPY_CHUNK
from .object_format import is_valid_oid
from .sink import ObjectSink

__all__ = [
    "LfsStore",
    "LfsSettings",
    "HttpOptions",
    "CredentialSource",
    "LfsRequestError",
    "LfsAuthenticationError",
    "LfsObjectError",
    "LfsObjectTooLargeError",
    "EXPIRY_MARGIN",
]

# An action is reused only while it has longer than this to live (git-lfs uses the same).
EXPIRY_MARGIN = 5.0


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


class _BrokenOff(Exception):
    """A download stopped short; it may be tried again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
        self._ssh = ssh
        self._sleep = sleep
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {"upload": _Pending(), "download": _Pending()}
        self._http = LfsHttp(
            endpoint,
            self.url,
            settings=self.settings,
            credentials=credentials,
            http_options=http_options or (lambda _url: HttpOptions()),
            sleep=sleep,
        )

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

    def get(self, oid: str, sink: ObjectSink) -> None:
        answer = self._answer("download", oid)
        attempt = refreshed = 0
        while True:
            self._raise_object_error(answer)
            try:
                self._download(oid, answer, answer.actions["download"], sink)
                break
            except ActionRefused:
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
                self._sleep(self._http.backoff(attempt))
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
            except ActionRefused:
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
        self._http.close()

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

    def _take_chunk(self, pending: _Pending, oid: str) -> builtins.list[str]:
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
        self,
        operation: Operation,
        oids: builtins.list[str],
        sizes: Mapping[str, builtins.list[int]],
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
        self, operation: Operation, objects: builtins.list[tuple[str, int]]
    ) -> dict[str, ObjectAnswer]:
        """One batch request (split further if the server finds it too large)."""
        headers = dict(JSON_HEADERS)
        url = self.endpoint.url
        if self._ssh is not None:
            auth = self._ssh.authenticate(operation)
            headers.update(auth.headers)
            url = (auth.href or url).rstrip("/")
        url += "/objects/batch"
        requested = dict(objects)
        body = batch_request(operation, objects, self.settings.ref)
        sent_at = time.time()
        response = self._http.request(
            "POST", url, what=f"the {operation} batch request", headers=headers, body=body
        )
        with finished(response):
            status = response.status_code
            content = read_bounded(response, MAX_RESPONSE_BYTES)
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
    def _download(self, oid: str, answer: ObjectAnswer, action: Action, sink: ObjectSink) -> None:
        response = self._http.request(
            "GET",
            action.href,
            what="the download",
            oid=oid,
            headers=action.headers,
            credentials=not answer.authenticated,
            action=True,
        )
        with finished(response):
            if response.status_code == 404:
                raise RemoteObjectMissingError(self.url, oid)
            if response.status_code != 200:
                raise LfsRequestError(
                    self.url,
                    f"the download from {redact_url(action.href)}",
                    response.status_code,
                    parse_error_message(read_bounded(response, ERROR_BODY_LIMIT)),
                    oid=oid,
                )
            sink.restart()  # a retry starts again from the first byte
            sink.narrow(answer.size)  # nor more than the server announced
            try:
                for chunk in response.iter_content(COPY_CHUNK):
                    sink.write(chunk)  # cut off past the object's size
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                raise _BrokenOff(network_reason(exc)) from None
        if sink.received != answer.size:
            raise _BrokenOff(f"it ended after {sink.received} of {answer.size} bytes")

    def _upload(
        self, oid: str, size: int, source: Path, action: Action, authenticated: bool
    ) -> None:
        def body() -> HashingReader:
            return HashingReader(source, oid, size)

        response = self._http.request(
            "PUT",
            action.href,
            what="the upload",
            oid=oid,
            headers={"Content-Type": "application/octet-stream", **action.headers},
            body=body,
            credentials=not authenticated,
            action=True,
        )
        with finished(response):
            if not 200 <= response.status_code < 300:
                raise LfsRequestError(
                    self.url,
                    f"the upload to {redact_url(action.href)}",
                    response.status_code,
                    parse_error_message(read_bounded(response, ERROR_BODY_LIMIT)),
                    oid=oid,
                )

    def _verify(self, oid: str, size: int, action: Action, authenticated: bool) -> None:
        response = self._http.request(
            "POST",
            action.href,
            what="the verify request",
            oid=oid,
            headers={**JSON_HEADERS, **action.headers},
            body=verify_request(oid, size),
            credentials=not authenticated,
            action=True,
        )
        with finished(response):
            if response.status_code != 200:
                raise LfsRequestError(
                    self.url,
                    "the server's check of the uploaded object",
                    response.status_code,
                    parse_error_message(read_bounded(response, ERROR_BODY_LIMIT)),
                    oid=oid,
                )
