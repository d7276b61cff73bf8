"""What a Git LFS server (or the ssh server behind ``git-lfs-authenticate``) may send, beyond
the batch JSON itself: redirects, header values, ``Retry-After``, and output without end
(docs/security.md, "The Git LFS store").

Each answer comes from a tiny server on 127.0.0.1 that answers every request the same
crafted way. Whatever it sends, the store either goes on or fails with one of its named
errors, and never sends the user's credentials to a host the server picks.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from git_theta_filter.store.base import StoreError
from git_theta_filter.store.lfs import LfsSettings, LfsStore
from git_theta_filter.store.lfs_endpoint import SshTarget, endpoint_from_lfs_url
from git_theta_filter.store.lfs_http import HttpOptions, LfsHttp
from git_theta_filter.store.lfs_protocol import LfsProtocolError
from git_theta_filter.store.lfs_ssh import SshAuthenticator
from git_theta_filter.store.sink import ObjectSink

CONTENT = b"payload"
OID = hashlib.sha256(CONTENT).hexdigest()

# (status, headers, body) for a request's method and path, on the server at ``base``.
Respond = Callable[[str, str, str], tuple[int, dict[str, str], bytes]]


class Hostile:
    """A server on 127.0.0.1 that answers with ``respond`` and records every request's
    path and headers."""

    def __init__(self, respond: Respond) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hostile.seen.append((self.path, dict(self.headers)))
                status, headers, body = respond(self.command, self.path, hostile.base)
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hostile() -> Iterator[Callable[[Respond], Hostile]]:
    servers: list[Hostile] = []

    def start(respond: Respond) -> Hostile:
        servers.append(Hostile(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.server.shutdown()
        server.server.server_close()


def download_action(href: str, header: dict[str, str] | None = None) -> bytes:
    action = {"href": href, "header": header or {}}
    entry = {"oid": OID, "size": len(CONTENT), "actions": {"download": action}}
    return json.dumps({"objects": [entry]}).encode()


def download(base: str) -> None:
    endpoint = endpoint_from_lfs_url(f"{base}/org/repo.git/info/lfs")
    assert endpoint is not None
    store = LfsStore(endpoint, settings=LfsSettings(max_retries=1), sleep=lambda _s: None)
    store.prepare("download", {OID: (len(CONTENT),)})
    store.get(OID, ObjectSink(io.BytesIO(), store.url, OID, 1 << 20))


def test_lfs_a_redirect_to_another_host_takes_no_netrc_entry_nor_the_users_extra_headers(
    hostile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests drops Authorization on a redirect to another host, but added that host's
    ~/.netrc entry there and kept the user's http.extraHeader (both were sent)."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine localhost login me password netrc-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    def respond(method: str, path: str, base: str) -> tuple[int, dict[str, str], bytes]:
        if path == "/landed":
            return 200, {}, b"{}"
        elsewhere = base.replace("127.0.0.1", "localhost") + "/landed"
        return 307, {"Location": elsewhere}, b""

    server = hostile(respond)
    endpoint = endpoint_from_lfs_url(f"{server.base}/org/repo.git/info/lfs")
    assert endpoint is not None
    http = LfsHttp(
        endpoint,
        endpoint.store_url,
        settings=LfsSettings(),
        credentials=None,
        http_options=lambda _url: HttpOptions(extra_headers=(("X-Token", "user-secret"),)),
        sleep=lambda _s: None,
    )
    response = http.request(
        "POST", endpoint.url + "/objects/batch", what="the batch request", headers={}, body=b"{}"
    )
    response.close()
    (first, asked), (landed, there) = server.seen
    assert first.endswith("/objects/batch") and asked.get("X-Token") == "user-secret"
    assert landed == "/landed"
    assert "Authorization" not in there and "X-Token" not in there, there


@pytest.mark.parametrize(
    "answer",
    [
        (307, {"Location": "file:///etc/passwd"}, b""),
        (307, {"Location": "/again"}, b""),  # on and on
        (307, {"Location": "http://127.0.0.1:99999/x"}, b""),
        (503, {"Retry-After": "9" * 400}, b""),  # OverflowError: int too large for a float
        (503, {"Retry-After": "9" * 5000}, b""),  # ValueError: past Python's digit limit
        (503, {"Retry-After": "\u00b2"}, b""),  # a digit to str.isdigit, not to int()
        (503, {"Retry-After": "Fri, 01 Jan 99999999999999999999 00:00:00 GMT"}, b""),
    ],
    ids=[
        "redirect-to-file",
        "redirect-loop",
        "redirect-to-port-99999",
        "retry-after-400-digits",
        "retry-after-5000-digits",
        "retry-after-superscript-two",
        "retry-after-year-1e20",
    ],
)
def test_lfs_a_crafted_redirect_or_retry_after_is_a_named_error(hostile, answer) -> None:
    server = hostile(lambda _m, _p, _b: answer)
    with pytest.raises(StoreError):  # an InvalidSchema, OverflowError or ValueError escaped
        download(server.base)


@pytest.mark.parametrize(
    "action",
    [
        {"href": "http://a..b/object"},  # urllib3's LocationParseError escaped
        {"header": {"X-A": " leading space"}},  # requests' InvalidHeader escaped
        {"header": {"X-A": "\u20ac"}},  # http.client's UnicodeEncodeError escaped
    ],
    ids=["href-with-an-empty-label", "header-with-leading-space", "header-not-latin-1"],
)
def test_lfs_a_download_action_requests_cannot_send_is_a_named_error(hostile, action) -> None:
    def respond(method: str, path: str, base: str) -> tuple[int, dict[str, str], bytes]:
        if method == "POST":
            return 200, {}, download_action(action.get("href", base + "/o"), action.get("header"))
        return 200, {}, CONTENT

    server = hostile(respond)
    with pytest.raises(StoreError):
        download(server.base)


def test_lfs_git_lfs_authenticate_output_is_read_no_further_than_its_limit(tmp_path: Path) -> None:
    """ssh's whole output was read into memory before its size was checked."""
    finished = tmp_path / "wrote-it-all"
    ssh = f"head -c {20 << 20} /dev/zero && touch {finished}; :"
    authenticator = SshAuthenticator(
        SshTarget("git@h.example", "r.git"), "lfs+https://h.example/r.git/info/lfs", ssh_command=ssh
    )
    started = time.monotonic()
    with pytest.raises(LfsProtocolError, match="more than 16777216 bytes"):
        authenticator.authenticate("download")
    assert time.monotonic() - started < 30
    time.sleep(0.5)  # ssh, killed, would have written the file by now
    assert not finished.exists(), "all 20 MiB were read"
