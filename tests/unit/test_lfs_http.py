"""The LFS store (store/lfs.py) and its HTTP (store/lfs_http.py) against a scripted server:
what they do with each answer an LFS server, or a host an action names, may send, and with
a local copy that changed under an upload."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from git_theta_filter.store.base import (
    RemoteObjectMissingError,
    StoreError,
    StoreUnavailableError,
)
from git_theta_filter.store.lfs import LfsObjectTooLargeError, LfsRequestError, LfsStore
from git_theta_filter.store.lfs_endpoint import endpoint_from_lfs_url
from git_theta_filter.store.lfs_http import (
    ActionRefused,
    HashingReader,
    HttpOptions,
    LfsAuthenticationError,
    LfsHttp,
    LfsSettings,
)
from git_theta_filter.store.lfs_protocol import Credential
from git_theta_filter.store.object_format import ObjectFormatError
from git_theta_filter.store.sink import ObjectSink


@dataclass
class Answer:
    status: int
    body: bytes = b"{}"
    # Set: the answer waits for it, so that a test can order two threads' requests.
    held_until: threading.Event | None = None


@dataclass
class Scripted:
    """Answers each request with the next of ``answers`` (418 once they run out) and
    records the method, path and Authorization header of each."""

    answers: list[Answer]
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(script: Scripted) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with script.lock:
                script.requests.append((self.command, self.path, self.headers["Authorization"]))
                answer = script.answers.pop(0) if script.answers else Answer(418, b"")
            if answer.held_until is not None:
                answer.held_until.wait(10)
            self.send_response(answer.status)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def serve():
    """``serve(*answers)``: a scripted server on 127.0.0.1 and its base URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(*answers: Answer) -> tuple[Scripted, str]:
        script = Scripted(list(answers))
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return script, f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class Credentials:
    """A stand-in for ``git credential``: hands out ``password`` and records each call."""

    def __init__(self, password: str = "wrong") -> None:
        self.password = password
        self.calls: list[str] = []

    def fill(self, url: str) -> Credential:
        self.calls.append("fill")
        return Credential((("username", "me"), ("password", self.password)))

    def approve(self, credential: Credential) -> None:
        self.calls.append("approve")

    def reject(self, credential: Credential) -> None:
        self.calls.append("reject")


class Sleeps(list):
    """Records the waits asked for; a request that would retry on and on fails the test."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        assert len(self) <= 20, "retried on and on"


def lfs_http(
    base: str,
    credentials: Credentials | None = None,
    sleep: Callable[[float], None] | None = None,
    **settings,
) -> LfsHttp:
    endpoint = endpoint_from_lfs_url(f"{base}/org/repo.git/info/lfs")
    assert endpoint is not None
    return LfsHttp(
        endpoint,
        endpoint.store_url,
        settings=LfsSettings(**settings),
        credentials=credentials,
        http_options=lambda _url: HttpOptions(),
        sleep=Sleeps() if sleep is None else sleep,
    )


def batch(http: LfsHttp) -> int:
    """The status of one batch request to ``http``'s endpoint."""
    response = http.request(
        "POST", http.endpoint.url + "/objects/batch", what="the batch request", headers={}
    )
    response.close()
    return response.status_code


# -- upload bodies -------------------------------------------------------------------------------


def test_an_upload_body_can_only_be_rewound_to_its_start(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(b"payload")
    reader = HashingReader(path, hashlib.sha256(b"payload").hexdigest(), 7)
    assert reader.read(3) == b"pay"
    with pytest.raises(OSError, match="can only be rewound to its start"):
        reader.seek(3)
    assert reader.seek(0) == 0 and reader.read() == b"payload"
    reader.close()


def test_an_upload_body_whose_local_copy_got_shorter_stops_instead_of_ending_early(
    tmp_path: Path,
) -> None:
    # The request announced 10 bytes; ending at 7 would leave the server waiting, or
    # storing a short object if it took the end of the body as the end of the object.
    path = tmp_path / "object"
    path.write_bytes(b"payload")
    oid = hashlib.sha256(b"payload...").hexdigest()
    reader = HashingReader(path, oid, 10)
    assert reader.read(100) == b"payload"
    with pytest.raises(ObjectFormatError) as raised:
        reader.read(100)
    assert str(raised.value) == f"object {oid} is corrupt: the local copy ends after 7 of 10 bytes"
    reader.close()


# -- retries -------------------------------------------------------------------------------------


def test_a_server_that_refuses_connections_is_unavailable_after_maxretries() -> None:
    sleeps = Sleeps()
    http = lfs_http("http://127.0.0.1:1", sleep=sleeps, max_retries=2)  # nothing listens there
    with pytest.raises(StoreUnavailableError) as raised:
        batch(http)
    assert str(raised.value) == (
        "object store lfs+http://127.0.0.1:1/org/repo.git/info/lfs: unavailable (the batch "
        "request to http://127.0.0.1:1/org/repo.git/info/lfs/objects/batch: Connection refused)"
    )
    assert len(sleeps) == 2


# -- credentials ---------------------------------------------------------------------------------


def test_an_action_url_refused_as_stale_is_left_to_the_store_to_ask_again(serve) -> None:
    # An action href carries the server's own, pre-signed authorization: a 401 or 403
    # means it has expired, which a new batch answer fixes; credentials would not.
    script, base = serve(Answer(403), Answer(401))
    credentials = Credentials()
    http = lfs_http(base, credentials)
    for headers, send_credentials in (({"Authorization": "Bearer stale"}, True), ({}, False)):
        with pytest.raises(ActionRefused):
            http.request(
                "GET",
                f"{base}/storage/object",
                what="the download",
                headers=headers,
                credentials=send_credentials,
                action=True,
            )
    assert len(script.requests) == 2 and credentials.calls == []


def test_a_403_without_credentials_fails_without_asking_for_any(serve) -> None:
    script, base = serve(Answer(403, b'{"message": "this repository is closed"}'))
    credentials = Credentials()
    with pytest.raises(LfsAuthenticationError) as raised:
        batch(lfs_http(base, credentials))
    assert str(raised.value).endswith(
        "unavailable (the batch request was refused with HTTP 403: this repository is closed)"
    )
    assert len(script.requests) == 1 and credentials.calls == []


def test_a_401_with_no_way_to_get_credentials_says_it_needs_them(serve) -> None:
    script, base = serve(Answer(401))
    with pytest.raises(LfsAuthenticationError) as raised:
        batch(lfs_http(base, credentials=None))
    assert str(raised.value) == (
        f"object store lfs+{base}/org/repo.git/info/lfs: unavailable "
        "(the batch request needs credentials (HTTP 401))"
    )
    assert len(script.requests) == 1


def test_credentials_refused_once_fail_every_later_request_without_sending_it(serve) -> None:
    script, base = serve(Answer(401), Answer(401, b'{"message": "bad password"}'))
    credentials = Credentials()
    http = lfs_http(base, credentials)
    with pytest.raises(LfsAuthenticationError, match="refused with HTTP 401: bad password"):
        batch(http)
    assert [auth is not None for _method, _path, auth in script.requests] == [False, True]
    assert credentials.calls == ["fill", "reject"]
    with pytest.raises(LfsAuthenticationError, match="refused with HTTP 401: bad password"):
        batch(http)
    assert len(script.requests) == 2 and credentials.calls == ["fill", "reject"]


def test_credentials_refused_on_one_thread_are_not_asked_for_again_by_another(serve) -> None:
    # The first thread's request is answered 401 only after the second thread's
    # credentials were refused: by then asking the user again would be in vain.
    second_done = threading.Event()
    script, base = serve(Answer(401, held_until=second_done), Answer(401), Answer(401))
    credentials = Credentials()
    http = lfs_http(base, credentials)
    failures: list[BaseException] = []

    def first() -> None:
        try:
            batch(http)
        except LfsAuthenticationError as exc:
            failures.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    deadline = time.monotonic() + 10
    while not script.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(LfsAuthenticationError, match="refused with HTTP 401") as second:
        batch(http)
    second_done.set()
    thread.join(10)
    assert failures == [second.value]
    assert credentials.calls == ["fill", "reject"]


# -- the store: what it asks, and what it makes of the answers -----------------------------------

CONTENT = b"payload"
OID = hashlib.sha256(CONTENT).hexdigest()


def lfs_store(base: str, **settings) -> LfsStore:
    endpoint = endpoint_from_lfs_url(f"{base}/org/repo.git/info/lfs")
    assert endpoint is not None
    return LfsStore(endpoint, settings=LfsSettings(**settings), sleep=Sleeps())


def batch_answer(base: str, *actions: str) -> Answer:
    """A batch answer for OID with ``actions``, each at ``<base>/<action>?sig=secret`` with its
    own authorization, as a server hands out pre-signed URLs."""
    hrefs = {
        action: {"href": f"{base}/{action}?sig=secret", "header": {"Authorization": "Token t"}}
        for action in actions
    }
    entry = {"oid": OID, "size": len(CONTENT), "actions": hrefs}
    return Answer(200, json.dumps({"transfer": "basic", "objects": [entry]}).encode())


def download(store: LfsStore) -> bytes:
    store.prepare("download", {OID: (len(CONTENT),)})
    out = io.BytesIO()
    store.get(OID, ObjectSink(out, store.url, OID, 1 << 20))
    return out.getvalue()


def upload(store: LfsStore, tmp_path: Path) -> bool:
    source = tmp_path / "object"
    source.write_bytes(CONTENT)
    store.prepare("upload", {OID: (len(CONTENT),)})
    return store.put(OID, source)


def test_the_lfs_store_refuses_to_announce_an_invalid_oid() -> None:
    store = lfs_store("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="invalid object id '../objects'"):
        store.prepare("download", {"../objects": (1,)})


def test_the_lfs_store_asks_for_no_object_of_unknown_size(serve) -> None:
    script, base = serve()
    store = lfs_store(base)
    with pytest.raises(StoreError) as raised:
        store.get(OID, ObjectSink(io.BytesIO(), store.url, OID, 1 << 20))
    assert str(raised.value) == (
        f"object {OID} in lfs+{base}/org/repo.git/info/lfs: "
        "its size is unknown, and the LFS API needs it"
    )
    assert script.requests == []


def test_a_download_refused_again_after_a_new_batch_answer_fails(serve) -> None:
    script, base = serve()
    script.answers += [batch_answer(base, "download"), Answer(403)] * 2
    with pytest.raises(LfsAuthenticationError, match=f"object {OID} .*refused, twice"):
        download(lfs_store(base))
    assert len(script.requests) == 4


def test_a_download_that_keeps_breaking_off_is_unavailable_after_maxretries(serve) -> None:
    script, base = serve()
    script.answers += [batch_answer(base, "download"), Answer(200, b"pay"), Answer(200, b"pay")]
    with pytest.raises(StoreUnavailableError) as raised:
        download(lfs_store(base, max_retries=1))
    assert str(raised.value).endswith(
        "unavailable (the download broke off: it ended after 3 of 7 bytes)"
    )
    assert OID in str(raised.value) and len(script.requests) == 3


def test_a_download_answered_404_is_a_missing_object(serve) -> None:
    script, base = serve()
    script.answers += [batch_answer(base, "download"), Answer(404)]
    with pytest.raises(RemoteObjectMissingError, match=OID):
        download(lfs_store(base))


def test_a_download_answered_with_an_error_names_its_href_without_the_query(serve) -> None:
    script, base = serve()
    script.answers += [batch_answer(base, "download"), Answer(400, b'{"message": "bad range"}')]
    with pytest.raises(LfsRequestError) as raised:
        download(lfs_store(base))
    assert str(raised.value).endswith(
        f"unavailable (the download from {base}/download failed with HTTP 400: bad range)"
    )
    assert OID in str(raised.value) and "secret" not in str(raised.value)


def test_an_object_over_the_size_limit_is_refused_before_any_request(serve, tmp_path) -> None:
    script, base = serve()
    with pytest.raises(LfsObjectTooLargeError, match=f"object {OID} .*is 7 bytes, over"):
        upload(lfs_store(base, max_object_size=6), tmp_path)
    assert script.requests == []


def test_an_upload_refused_again_after_a_new_batch_answer_fails(serve, tmp_path) -> None:
    script, base = serve()
    script.answers += [batch_answer(base, "upload"), Answer(403)] * 2
    with pytest.raises(LfsAuthenticationError, match=f"object {OID} .*upload was refused twice"):
        upload(lfs_store(base), tmp_path)
    assert len(script.requests) == 4


def test_an_upload_answered_with_an_error_names_its_href_without_the_query(serve, tmp_path) -> None:
    script, base = serve()
    script.answers += [batch_answer(base, "upload"), Answer(400, b'{"message": "no space"}')]
    with pytest.raises(LfsRequestError) as raised:
        upload(lfs_store(base), tmp_path)
    assert str(raised.value).endswith(
        f"unavailable (the upload to {base}/upload failed with HTTP 400: no space)"
    )
    assert OID in str(raised.value) and "secret" not in str(raised.value)


def test_an_upload_the_server_fails_to_verify_is_an_error(serve, tmp_path) -> None:
    script, base = serve()
    script.answers += [
        batch_answer(base, "upload", "verify"),
        Answer(200),
        Answer(400, b'{"message": "size differs"}'),
    ]
    with pytest.raises(LfsRequestError) as raised:
        upload(lfs_store(base), tmp_path)
    assert str(raised.value).endswith(
        "unavailable (the server's check of the uploaded object failed with HTTP 400: size differs)"
    )
    assert OID in str(raised.value)
