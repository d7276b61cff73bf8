"""A real Git LFS server for the tests: giftless 0.6.2 on 127.0.0.1, behind a small test wrapper.

Run as a script (``python lfs_server.py --port P --storage DIR [--auth user:password]``)
it serves giftless with its local-storage backend. The WSGI wrapper around it:

* with ``--auth``, demands HTTP Basic credentials on every request (401 with
  ``LFS-Authenticate: Basic`` otherwise), as a hosted LFS server does;
* records every request (its kind, the client's port, whether it was
  authorized), served at ``GET /_stats``;
* takes faults to inject, set with ``POST /_control``: answer the next N
  requests of a kind with a status (and ``Retry-After``), rewrite the expiry
  of batch actions, append bytes to downloads, or hang uploads (for a kill);

In a test, :class:`LfsServer` starts and stops the process and talks to ``/_control``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ORG, REPO = "team", "models"
_KINDS = (
    ("batch", "POST", re.compile(r".*/info/lfs/objects/batch\Z")),
    ("verify", "POST", re.compile(r".*/objects/storage/verify\Z")),
    ("upload", "PUT", re.compile(r".*/objects/storage/[0-9a-f]{64}\Z")),
    ("download", "GET", re.compile(r".*/objects/storage/[0-9a-f]{64}\Z")),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LfsServer:
    """A giftless process on a free port; ``endpoint`` is its LFS URL for ``team/models``."""

    def __init__(self, root: Path, *, auth: str | None = None, git: bool = False) -> None:
        self.root = root
        self.storage = root / "storage"
        # With git=True it also serves git itself (smart HTTP) from root/git, so a
        # remote URL http://127.0.0.1:<port>/team/models.git is a whole hosted repository.
        self.git_root = root / "git" if git else None
        self.port = free_port()
        self.auth = auth
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def remote_url(self, name: str = REPO) -> str:
        """A git remote URL whose derived LFS endpoint is this server's."""
        return f"{self.base}/{ORG}/{name}.git"

    def endpoint(self, name: str = REPO) -> str:
        return f"{self.remote_url(name)}/info/lfs"

    def bare(self, name: str = REPO) -> Path:
        """A hosted bare repository (``git=True``), created on first use."""
        assert self.git_root is not None
        path = self.git_root / ORG / f"{name}.git"
        if not path.exists():
            path.mkdir(parents=True)
            subprocess.run(
                ["git", "init", "-q", "--bare", "--initial-branch=main", str(path)], check=True
            )
            subprocess.run(
                ["git", "-C", str(path), "config", "http.receivepack", "true"], check=True
            )
        return path

    def start(self) -> LfsServer:
        self.root.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, __file__, "--port", str(self.port), "--storage", str(self.storage)]
        if self.auth:
            args += ["--auth", self.auth]
        if self.git_root is not None:
            self.git_root.mkdir(parents=True, exist_ok=True)
            args += ["--git-root", str(self.git_root)]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(args, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"giftless exited: {(self.root / 'server.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("giftless did not start within 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        self.stop()

    def _call(self, path: str, data: dict | None = None) -> object:
        request = urllib.request.Request(
            self.base + path,
            data=None if data is None else json.dumps(data).encode(),
            headers={"Authorization": self._authorization()} if self.auth else {},
            method="GET" if data is None else "POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def _authorization(self) -> str:
        return "Basic " + base64.b64encode(str(self.auth).encode()).decode()

    def control(self, **settings: object) -> None:
        """Replace the wrapper's settings (faults, expires_in, expires_at, extra_bytes,
        object_errors, hang_upload)."""
        self._call("/_control", settings)

    def reset(self) -> None:
        self._call("/_control", {})
        self._call("/_stats", {"clear": True})

    def stats(self) -> list[dict]:
        return self._call("/_stats")  # type: ignore[return-value]

    def count(self, kind: str) -> int:
        return sum(1 for entry in self.stats() if entry["kind"] == kind)

    def stored(self, name: str = REPO) -> dict[str, bytes]:
        """Objects on the server for repository ``name``: oid -> bytes."""
        folder = self.storage / ORG / name
        if not folder.is_dir():
            return {}
        return {path.name: path.read_bytes() for path in folder.iterdir()}


# -- the server process ------------------------------------------------------------------------
class TestWrapper:
    """WSGI middleware around giftless: Basic auth, request records, fault injection."""

    def __init__(self, app, auth: str | None, signal_dir: Path, git_root: Path | None) -> None:
        self.app = app
        self.git_root = git_root
        self.auth = auth
        self.signal_dir = signal_dir
        self.lock = threading.Lock()
        self.settings: dict = {}
        self.records: list[dict] = []

    @staticmethod
    def _json(start_response, status: str, data: object, headers=()) -> list[bytes]:
        body = json.dumps(data).encode()
        start_response(
            status,
            [("Content-Type", "application/vnd.git-lfs+json"), ("Content-Length", str(len(body)))]
            + list(headers),
        )
        return [body]

    def _kind(self, method: str, path: str) -> str:
        for kind, verb, pattern in _KINDS:
            if method == verb and pattern.match(path):
                return kind
        return "other"

    def _authorized(self, environ) -> bool:
        header = environ.get("HTTP_AUTHORIZATION", "")
        expected = "Basic " + base64.b64encode(str(self.auth).encode()).decode()
        return header == expected

    def _take_fault(self, kind: str) -> dict | None:
        with self.lock:
            for fault in self.settings.get("faults", []):
                if fault["kind"] == kind and fault.get("count", 1) > 0:
                    fault["count"] = fault.get("count", 1) - 1
                    return fault
        return None

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if path in ("/_control", "/_stats"):
            return self._test_api(environ, start_response, path)
        if self.git_root is not None and _is_git_path(path):
            return self._git(environ, start_response)
        kind = self._kind(method, path)
        batch_size = None
        if kind == "batch":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)
            batch_size = len(json.loads(body or b"{}").get("objects", []))
        # Like a hosted server: the batch API wants the user's credentials; the
        # transfer URLs it hands out carry giftless's own tokens, which giftless checks.
        authorized = self.auth is None or kind != "batch" or self._authorized(environ)
        with self.lock:
            self.records.append(
                {
                    "kind": kind,
                    "method": method,
                    "path": path,
                    "client_port": environ.get("REMOTE_PORT"),
                    "authorization": bool(environ.get("HTTP_AUTHORIZATION")),
                    "authorized": authorized,
                    "extra_header": environ.get("HTTP_X_THETA_TEST"),
                    "objects": batch_size,
                }
            )
        if not authorized:
            return self._json(
                start_response,
                "401 Unauthorized",
                {"message": "Credentials needed"},
                [("LFS-Authenticate", 'Basic realm="test"')],
            )
        fault = self._take_fault(kind)
        if fault is not None:
            headers = [("Retry-After", str(fault["retry_after"]))] if "retry_after" in fault else []
            return self._json(
                start_response, f"{fault['status']} Injected", {"message": "injected"}, headers
            )
        if kind == "upload" and self.settings.get("hang_upload"):
            (self.signal_dir / "upload-started").touch()
            time.sleep(3600)
        if kind == "batch" or (kind == "download" and self.settings.get("extra_bytes")):
            return self._rewrite(environ, start_response, kind)
        if kind == "download":
            return self.app(environ, self._with_length(start_response, path))
        return self.app(environ, start_response)

    def _git(self, environ, start_response):
        """Serve git's smart HTTP protocol from ``git_root`` through ``git http-backend`` (CGI)."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(self.git_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": environ["REQUEST_METHOD"],
            "PATH_INFO": environ.get("PATH_INFO", ""),
            "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "tester",
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(self.git_root),
        }
        if environ.get("HTTP_GIT_PROTOCOL"):
            env["GIT_PROTOCOL"] = environ["HTTP_GIT_PROTOCOL"]
        result = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, content = result.stdout.partition(b"\r\n\r\n")
        status, headers = "200 OK", []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            elif name:
                headers.append((name, value.strip()))
        headers.append(("Content-Length", str(len(content))))
        start_response(status, headers)
        return [content]

    def _with_length(self, start_response, path: str):
        """giftless streams downloads without a length, which makes waitress close the
        connection after each; a length (from the stored file) lets it be kept alive."""
        parts = path.strip("/").split("/")  # <org>/<repo>/objects/storage/<oid> (legacy form)
        stored = self.signal_dir / "storage" / parts[0] / parts[1] / parts[-1]

        def respond(status, headers, exc_info=None):
            if status.startswith("200") and stored.is_file():
                headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
                headers.append(("Content-Length", str(stored.stat().st_size)))
            return start_response(status, headers, exc_info)

        return respond

    def _rewrite(self, environ, start_response, kind: str):
        captured: dict = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        chunks = self.app(environ, capture)
        try:
            body = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        if kind == "download":
            body += b"\0" * int(self.settings["extra_bytes"])
        elif captured["status"].startswith("200"):
            body = self._patch_batch(body)
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        start_response(captured["status"], headers + [("Content-Length", str(len(body)))])
        return [body]

    def _patch_batch(self, body: bytes) -> bytes:
        data = json.loads(body)
        errors = self.settings.get("object_errors", {})
        for entry in data.get("objects", []):
            if entry.get("oid") in errors:
                entry.pop("actions", None)
                entry["error"] = {"code": errors[entry["oid"]], "message": "injected"}
            for action in (entry.get("actions") or {}).values():
                if "expires_in" in self.settings:
                    action["expires_in"] = self.settings["expires_in"]
                if "expires_at" in self.settings:
                    action.pop("expires_in", None)
                    action["expires_at"] = self.settings["expires_at"]
        return json.dumps(data).encode()

    def _test_api(self, environ, start_response, path: str):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = json.loads(environ["wsgi.input"].read(length) or b"null") if length else None
        with self.lock:
            if path == "/_control":
                self.settings = data or {}
                return self._json(start_response, "200 OK", None)
            if data and data.get("clear"):
                self.records = []
            return self._json(start_response, "200 OK", list(self.records))


def _is_git_path(path: str) -> bool:
    """git's own URLs in a repository (not its LFS API): refs, packs, loose objects."""
    if "/info/lfs" in path:
        return False
    return bool(
        re.search(r"\.git/(info/refs|git-upload-pack|git-receive-pack|HEAD|objects/)", path)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--auth")
    parser.add_argument("--git-root")
    args = parser.parse_args()
    storage = Path(args.storage)
    storage.mkdir(parents=True, exist_ok=True)
    config = storage.parent / "giftless.yaml"
    config.write_text(
        "AUTH_PROVIDERS:\n"
        "  - giftless.auth.allow_anon:read_write\n"
        "TRANSFER_ADAPTERS:\n"
        "  basic:\n"
        "    factory: giftless.transfer.basic_streaming:factory\n"
        "    options:\n"
        "      storage_class: giftless.storage.local_storage:LocalStorage\n"
        f"      storage_options: {{path: {json.dumps(str(storage))}}}\n"
    )
    os.environ["GIFTLESS_CONFIG_FILE"] = str(config)
    import waitress
    from giftless.app import init_app

    app = init_app()
    git_root = Path(args.git_root) if args.git_root else None
    app.wsgi_app = TestWrapper(app.wsgi_app, args.auth, storage.parent, git_root)
    # waitress keeps connections alive (werkzeug's development server closes each one),
    # so the tests can see the client reuse them.
    waitress.serve(app, host="127.0.0.1", port=args.port, threads=16, _quiet=True)


if __name__ == "__main__":
    main()
