"""Git's long-running filter protocol: the state machine in process, and the real
`git-theta filter-process` driven with raw pkt-lines."""

from __future__ import annotations

import io
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import assert_object, mlp_checkpoint, save, sha256_bytes, store_oids

from git_theta_filter.filter_protocol import ProtocolError, serve
from git_theta_filter.manifest import Manifest
from git_theta_filter.pktline import (
    FLUSH,
    PktLineReader,
    PktLineWriter,
    encode,
    encode_text,
    iter_content_packets,
)

HANDSHAKE = b"".join(encode_text(t) for t in ["git-filter-client", "version=2"]) + FLUSH
CAPABILITIES = (
    b"".join(encode_text(f"capability={c}") for c in ["clean", "smudge", "delay"]) + FLUSH
)


def request(command: str, pathname: str, content: bytes, *extra: str) -> bytes:
    lines = [f"command={command}", f"pathname={pathname}", *extra]
    return (
        b"".join(encode_text(t) for t in lines)
        + FLUSH
        + b"".join(iter_content_packets(content))
        + FLUSH
    )


def read_content(reader: PktLineReader) -> bytes:
    out = bytearray()
    while (packet := reader.read_packet()) is not None:
        out += packet
    return bytes(out)


def read_response(reader: PktLineReader) -> tuple[list[str], bytes | None, list[str] | None]:
    """(first status list, content, trailing status list);
    content is None for an error without content.
    """
    status = reader.read_text_list()
    if status != ["status=success"]:
        return status, None, None
    content = read_content(reader)
    return status, content, reader.read_text_list()


# -- the state machine, with a fake handler ------------------------------------------------------


class FakeOutput:
    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self.data = data
        self.fail_after = fail_after

    def write(self, write: Callable[[memoryview], object]) -> None:
        if self.fail_after is None:
            write(memoryview(self.data))
            return
        write(memoryview(self.data)[: self.fail_after])
        raise RuntimeError("object vanished mid-stream")


class FakeHandler:
    def clean(self, pathname: str, content: PktLineReader) -> bytes:
        buffer = bytearray(7)
        data = bytearray()
        while count := content.readinto(buffer):
            data += buffer[:count]
            if pathname == "fail-clean":
                raise ValueError("cannot clean this")
        return b"clean:" + bytes(data).upper()

    def prepare_smudge(
        self, pathname: str, content: PktLineReader, treeish: str | None = None
    ) -> FakeOutput:
        if pathname == "fail-prepare":
            raise ValueError("missing object")
        data = read_all(content)
        return FakeOutput(data[::-1], fail_after=3 if pathname == "fail-midway" else None)


def read_all(content: PktLineReader) -> bytes:
    data = bytearray()
    buffer = bytearray(7)
    while count := content.readinto(buffer):
        data += buffer[:count]
    return bytes(data)


def run_serve(stream: bytes) -> tuple[PktLineReader, list[tuple[str, str]]]:
    out = io.BytesIO()
    reports: list[tuple[str, str]] = []
    serve(
        PktLineReader(io.BytesIO(stream)),
        PktLineWriter(out),
        FakeHandler(),
        lambda exc, path: reports.append((str(exc), path)),
    )
    return PktLineReader(io.BytesIO(out.getvalue())), reports


def test_handshake_answers_version_2_and_only_clean_and_smudge() -> None:
    reader, reports = run_serve(HANDSHAKE + CAPABILITIES)
    assert reader.read_text_list() == ["git-filter-server", "version=2"]
    assert reader.read_text_list() == ["capability=clean", "capability=smudge"]
    with pytest.raises(EOFError):
        reader.read_packet()
    assert reports == []


def test_clean_and_smudge_responses_follow_the_protocol() -> None:
    big = bytes(range(256)) * 600  # several packets
    stream = (
        HANDSHAKE
        + CAPABILITIES
        + request("clean", "a.pth", b"hello")
        + request("smudge", "a.pth", big, "ref=refs/heads/main", "treeish=abc", "blob=def")
        + request("clean", "empty.pth", b"")
    )
    reader, reports = run_serve(stream)
    reader.read_text_list(), reader.read_text_list()
    assert read_response(reader) == (["status=success"], b"clean:HELLO", [])
    assert read_response(reader) == (["status=success"], big[::-1], [])
    assert read_response(reader) == (["status=success"], b"clean:", [])
    assert reports == []


def test_errors_fail_one_file_and_the_process_goes_on() -> None:
    stream = (
        HANDSHAKE
        + CAPABILITIES
        + request("clean", "fail-clean", b"x" * 100)
        + request("smudge", "fail-prepare", b"m")
        + request("smudge", "fail-midway", b"abcdefgh")
        + request("frobnicate", "c.pth", b"data")
        + request("clean", "ok.pth", b"fine")
    )
    reader, reports = run_serve(stream)
    reader.read_text_list(), reader.read_text_list()
    assert read_response(reader) == (["status=error"], None, None)
    assert read_response(reader) == (["status=error"], None, None)
    # Content already sent, then the trailing status list turns it into an error.
    assert read_response(reader) == (["status=success"], b"hgf", ["status=error"])
    assert read_response(reader) == (["status=error"], None, None)
    assert read_response(reader) == (["status=success"], b"clean:FINE", [])
    assert reports == [
        ("cannot clean this", "fail-clean"),
        ("missing object", "fail-prepare"),
        ("object vanished mid-stream", "fail-midway"),
        ("unsupported command 'frobnicate'", "c.pth"),
    ]


def test_a_command_git_did_not_negotiate_is_refused() -> None:
    only_clean = encode_text("capability=clean") + FLUSH
    reader, reports = run_serve(HANDSHAKE + only_clean + request("smudge", "a.pth", b"m"))
    assert reader.read_text_list() == ["git-filter-server", "version=2"]
    assert reader.read_text_list() == ["capability=clean"]
    assert read_response(reader) == (["status=error"], None, None)
    assert reports == [("unsupported command 'smudge'", "a.pth")]


@pytest.mark.parametrize(
    "welcome",
    [
        [b"git-filter-client", b"version=3"],
        [b"git-filter-server", b"version=2"],
        [],
    ],
)
def test_a_bad_handshake_is_a_protocol_error(welcome: list[bytes]) -> None:
    stream = b"".join(encode(w + b"\n") for w in welcome) + FLUSH
    with pytest.raises(ProtocolError, match="unexpected handshake"):
        run_serve(stream)


@pytest.mark.parametrize(
    "stream",
    [b"", HANDSHAKE, HANDSHAKE + encode_text("capability=clean")],
    ids=["nothing", "welcome only", "capabilities cut"],
)
def test_input_ending_during_the_handshake_is_a_protocol_error(stream: bytes) -> None:
    with pytest.raises(ProtocolError, match="the input ended during the handshake"):
        run_serve(stream)


# -- the real filter process ----------------------------------------------------------------------


class FilterProcess:
    """`git-theta filter-process` in a repository, spoken to with raw pkt-lines."""

    def __init__(self, git_env, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            ["git-theta", "filter-process"],
            cwd=cwd,
            env=git_env.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # A filter that stops answering would hang the suite; kill it instead.
        self.watchdog = threading.Timer(60, self.proc.kill)
        self.watchdog.start()
        self.reader = PktLineReader(self.proc.stdout)

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close(self) -> tuple[int, str]:
        self.proc.stdin.close()
        rest = self.proc.stdout.read()
        stderr = self.proc.stderr.read().decode()
        code = self.proc.wait()
        self.watchdog.cancel()
        assert rest == b"", f"unexpected output after the last response: {rest[:100]!r}"
        return code, stderr


@pytest.fixture
def filter_process(git_env, repo):
    process = FilterProcess(git_env, repo)
    yield process
    if process.proc.poll() is None:
        process.proc.kill()
        process.proc.wait()
    process.watchdog.cancel()


def handshake(process: FilterProcess) -> None:
    process.send(HANDSHAKE)
    assert process.reader.read_text_list() == ["git-filter-server", "version=2"]
    process.send(CAPABILITIES)
    assert process.reader.read_text_list() == ["capability=clean", "capability=smudge"]


def test_filter_process_clean_then_smudge(
    git_env, repo: Path, filter_process: FilterProcess, tmp_path: Path
) -> None:
    checkpoint = mlp_checkpoint(3, (64, 256, 16))  # ~83 KB: content spans several packets
    save(checkpoint, tmp_path / "model.pth")
    data = (tmp_path / "model.pth").read_bytes()
    assert len(data) > 65516
    handshake(filter_process)

    filter_process.send(request("clean", "model.pth", data))
    status, manifest_bytes, trailer = read_response(filter_process.reader)
    assert (status, trailer) == (["status=success"], [])
    manifest = Manifest.parse(manifest_bytes)
    assert (manifest.format, manifest.size, manifest.sha256) == (
        "torch-zip",
        len(data),
        sha256_bytes(data),
    )
    assert {t.name: t.shape for t in manifest.tensors} == {
        k: tuple(v.shape) for k, v in checkpoint.items()
    }
    by_name = {t.name: t for t in manifest.tensors}
    for name, tensor in checkpoint.items():
        assert_object(repo, by_name[name].oid, tensor=tensor)
    assert store_oids(repo) == manifest.object_ids()

    filter_process.send(
        request(
            "smudge",
            "model.pth",
            manifest_bytes,
            "ref=refs/heads/main",
            "treeish=" + "1" * 40,
            "blob=" + "2" * 40,
        )
    )
    status, rebuilt, trailer = read_response(filter_process.reader)
    assert (status, trailer) == (["status=success"], [])
    assert rebuilt == data
    code, stderr = filter_process.close()
    assert code == 0
    assert stderr == ""


def test_filter_process_errors_then_recovers(
    git_env, repo: Path, filter_process: FilterProcess, tmp_path: Path
) -> None:
    save({"w": torch.arange(10.0)}, tmp_path / "a.pth")
    data = (tmp_path / "a.pth").read_bytes()
    handshake(filter_process)
    filter_process.send(request("clean", "a.pth", data))
    _, manifest_bytes, _ = read_response(filter_process.reader)
    manifest = Manifest.parse(manifest_bytes)

    filter_process.send(request("frobnicate", "a.pth", b"whatever"))
    assert read_response(filter_process.reader) == (["status=error"], None, None)

    # A manifest whose tensor object is not in the store: an error for that file only.
    (tensor,) = manifest.tensors
    missing = "0" * 64
    orphan = manifest_bytes.replace(tensor.oid.encode(), missing.encode())
    filter_process.send(request("smudge", "models/orphan.pth", orphan))
    assert read_response(filter_process.reader) == (["status=error"], None, None)

    # The same process goes on to serve the next request.
    filter_process.send(request("smudge", "a.pth", manifest_bytes))
    assert read_response(filter_process.reader) == (["status=success"], data, [])
    code, stderr = filter_process.close()
    assert code == 0
    lines = stderr.splitlines()
    assert lines[0] == "git-theta: error: a.pth: unsupported command 'frobnicate'"
    assert lines[1].startswith(
        f"git-theta: error: models/orphan.pth: tensor object {missing} is missing from the local "
        "store, and no remote has an object store"
    )
    assert len(lines) == 2


def test_filter_process_refuses_a_bad_handshake(
    git_env, repo: Path, filter_process: FilterProcess
) -> None:
    filter_process.send(encode_text("git-filter-client") + encode_text("version=1") + FLUSH)
    code, stderr = filter_process.close()
    assert code == 1
    assert (
        stderr.strip()
        == "git-theta: error: unexpected handshake ['git-filter-client', 'version=1']"
    )


# What git waits for is the handshake's answer; only the protocol may be loaded before it.
_HEAVY_BEFORE_HANDSHAKE = (
    "numpy", "zstandard", "boto3", "botocore", "requests", "urllib3", "torch", "safetensors",
    "pygit2", "email", "socket", "ssl", "http", "json", "subprocess", "concurrent",
    "dataclasses", "pickle", "hashlib", "sqlite3", "argparse",
)  # fmt: skip
_PROTOCOL_MODULES = {
    "git_theta_filter", "git_theta_filter.version", "git_theta_filter.errors",
    "git_theta_filter.pktline", "git_theta_filter.filter_handshake",
    "git_theta_filter.filter_protocol", "git_theta_filter.cli", "git_theta_filter.cli._errors",
    "git_theta_filter.cli.filter_process", "git_theta_filter.terminal",
    "git_theta_filter.filter_session",
}  # fmt: skip


def _imported_modules(argv: list[str], cwd: Path, env: dict, session: bytes) -> tuple[set, bytes]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        cwd=cwd,
        env=env,
        input=session,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    imported = {
        line.split("|")[-1].strip()
        for line in result.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    return imported, result.stdout


def test_filter_process_answers_the_handshake_before_importing_anything_heavy(
    git_env, repo: Path
) -> None:
    """git waits for the handshake on every add, status and checkout: the modules the
    filter adds to a bare interpreter by then are the protocol's, nothing more."""
    script = shutil.which("git-theta", path=git_env.env["PATH"])
    assert script is not None
    bare, _ = _imported_modules(["-c", "pass"], repo, git_env.env, b"")
    # Git closes the pipe after the handshake: the filter has done all it would before a request.
    imported, answer = _imported_modules(
        [script, "filter-process"], repo, git_env.env, HANDSHAKE + CAPABILITIES
    )
    reader = PktLineReader(io.BytesIO(answer))
    assert reader.read_text_list() == ["git-filter-server", "version=2"]
    assert reader.read_text_list() == ["capability=clean", "capability=smudge"]
    added = imported - bare
    heavy = {m for m in added if m.split(".")[0] in _HEAVY_BEFORE_HANDSHAKE}
    assert not heavy, sorted(heavy)
    ours = {m for m in added if m.startswith("git_theta_filter")}
    assert ours <= _PROTOCOL_MODULES, sorted(ours - _PROTOCOL_MODULES)
    assert not (repo / ".git" / "theta" / "gc.lock").exists()  # no lock before a request


CLIENT = Path(__file__).resolve().parents[2] / "git_theta_filter" / "filter_client.py"


def _client_holding_site(tmp_path: Path, git_env, repo: Path) -> tuple[subprocess.Popen, Path]:
    """The filter's client serving git in its own process, as git starts it, with a
    ``sitecustomize`` that holds ``site``'s loading until the returned file exists."""
    held = tmp_path / "site-held"
    held.mkdir()
    release = tmp_path / "release-site"
    (held / "sitecustomize.py").write_text(
        f"import os, time\nwhile not os.path.exists({str(release)!r}):\n    time.sleep(0.01)\n"
    )
    env = {**git_env.env, "GIT_THETA_FILTER_SERVER": "0", "PYTHONPATH": str(held)}
    client = subprocess.Popen(
        [sys.executable, "-S", str(CLIENT)],
        cwd=repo,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return client, release


def _read_within(stream, size: int, seconds: float) -> bytes:
    """Up to ``size`` bytes of ``stream``, or what came before ``seconds`` passed."""
    got = b""
    deadline = time.monotonic() + seconds
    while len(got) < size and (left := deadline - time.monotonic()) > 0:
        if not select.select([stream], [], [], left)[0]:
            break
        chunk = os.read(stream.fileno(), size - len(got))
        if not chunk:
            break
        got += chunk
    return got


def test_the_filter_s_own_process_answers_the_handshake_before_loading_site(
    git_env, repo: Path, tmp_path: Path
) -> None:
    """git waits for the handshake: served in its own process, the filter answers it
    before ``site`` (the sandbox's .pth files, numpy, the store) is loaded."""
    client, release = _client_holding_site(tmp_path, git_env, repo)
    try:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(HANDSHAKE + CAPABILITIES)
        client.stdin.flush()
        expected = b"".join(
            encode_text(line) for line in ["git-filter-server", "version=2"]
        ) + FLUSH + b"".join(
            encode_text(line) for line in ["capability=clean", "capability=smudge"]
        ) + FLUSH  # fmt: skip
        assert _read_within(client.stdout, len(expected), 20) == expected
        release.touch()
        # Served after site is loaded: a clean of a file that is no model.
        client.stdin.write(request("clean", "notes.bin", b"not a model"))
        client.stdin.close()
        reader = PktLineReader(client.stdout)
        status, content, trailer = read_response(reader)
        assert status == ["status=success"] and trailer == []
        assert content is not None and content.startswith(b"git-theta-manifest")
        assert client.wait(timeout=60) == 0
    finally:
        release.touch()
        if client.poll() is None:
            client.kill()
        client.wait()


def test_the_filter_s_own_process_reports_a_bad_handshake_once_site_is_loaded(
    git_env, repo: Path, tmp_path: Path
) -> None:
    client, release = _client_holding_site(tmp_path, git_env, repo)
    release.touch()
    out, err = client.communicate(
        encode_text("git-filter-client") + encode_text("version=1") + FLUSH, timeout=60
    )
    assert client.returncode == 1
    assert out == b""
    assert err.decode().strip() == (
        "git-theta: error: unexpected handshake ['git-filter-client', 'version=1']"
    )


def test_filter_process_outside_a_repository_fails_each_request_not_the_handshake(
    git_env, tmp_path: Path
) -> None:
    script = shutil.which("git-theta", path=git_env.env["PATH"])
    assert script is not None
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    session = HANDSHAKE + CAPABILITIES + request("clean", "a.bin", b"data")
    result = subprocess.run(
        [script, "filter-process"],
        cwd=outside,
        env={**git_env.env, "GIT_CEILING_DIRECTORIES": str(tmp_path)},
        input=session,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0
    reader = PktLineReader(io.BytesIO(result.stdout))
    reader.read_text_list(), reader.read_text_list()
    assert read_response(reader) == (["status=error"], None, None)
    assert result.stderr.decode().strip() == (
        f"git-theta: error: a.bin: not a git repository: {outside}"
    )


def test_filter_process_never_imports_torch(git_env, repo: Path, tmp_path: Path) -> None:
    """Item 10: the filter stays light; -X importtime lists every module it loads."""
    save({"w": torch.ones(4)}, tmp_path / "a.pth")
    data = (tmp_path / "a.pth").read_bytes()
    session = HANDSHAKE + CAPABILITIES + request("clean", "a.pth", data)
    script = shutil.which("git-theta", path=git_env.env["PATH"])
    result = subprocess.run(
        [sys.executable, "-X", "importtime", script, "filter-process"],
        cwd=repo,
        env=git_env.env,
        input=session,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    reader = PktLineReader(io.BytesIO(result.stdout))
    reader.read_text_list(), reader.read_text_list()
    status, manifest, _ = read_response(reader)
    assert status == ["status=success"] and Manifest.parse(manifest).format == "torch-zip"
    imported = {
        line.split("|")[-1].strip()
        for line in result.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    assert "git_theta_filter.clean" in imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}


def test_filter_process_answers_a_clean_of_bytes_it_cleaned_lately_without_the_parsers(
    git_env, repo: Path, tmp_path: Path
) -> None:
    """git cleans a file again in `git commit` after a racy add: that second filter process
    gives the same manifest from the clean cache, with no format parser, nor the smudge
    side, nor git-lfs's pointers and endpoints, nor the hooks check (the first ran it), nor
    the worker pools' concurrent.futures (and logging), which nothing here submits to."""
    save(mlp_checkpoint(0), tmp_path / "m.pth")
    data = (tmp_path / "m.pth").read_bytes()
    script = shutil.which("git-theta", path=git_env.env["PATH"])
    assert script is not None
    session = HANDSHAKE + CAPABILITIES + request("clean", "model.pth", data)
    manifests = []
    for _ in range(2):
        imported, answer = _imported_modules([script, "filter-process"], repo, git_env.env, session)
        reader = PktLineReader(io.BytesIO(answer))
        reader.read_text_list(), reader.read_text_list()
        status, manifest, _ = read_response(reader)
        assert status == ["status=success"]
        manifests.append(manifest)
    assert manifests[0] == manifests[1]
    assert Manifest.parse(manifests[1]).sha256 == sha256_bytes(data)
    assert not {m for m in imported if m.startswith("git_theta_filter.formats.torch_zip")}
    unused = {"clean", "smudge", "lfs_pointer", "store.lfs_endpoint", "formats.layout", "hooks"}
    assert not {f"git_theta_filter.{name}" for name in unused} & imported
    assert "concurrent.futures" not in imported
