"""The filter server (docs/filter-server.md): git's filter command served by a warm process.

Whether a command was served by the server or by the client itself shows in
``PYTHONPROFILEIMPORTTIME``'s report on git's stderr: a client serving git
itself imports the filter's modules, a server's child has them already.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import GitEnv
from lfs_server import LfsServer

import git_theta_filter
from git_theta_filter import filter_server, filter_wire

PACKAGE = Path(git_theta_filter.__file__).resolve().parent
CLIENT = PACKAGE / "filter_client.py"
FILTER_IMPORT = b"git_theta_filter.filter_session"


@pytest.fixture
def served(git_env: GitEnv):
    """git_env with its own runtime directory; its servers stop at the end of the test."""
    # Short: a socket's path has at most 107 bytes, and pytest's directories are long.
    temporary = tempfile.mkdtemp(prefix="theta-", dir="/tmp")
    git_env.env.pop("XDG_RUNTIME_DIR", None)
    git_env.env["TMPDIR"] = temporary
    git_env.env["PYTHONPROFILEIMPORTTIME"] = "1"
    yield git_env
    # A server exits within CHECK_SOCKET_SECONDS of its socket's removal.
    shutil.rmtree(temporary, ignore_errors=True)


def runtime_directory(git_env: GitEnv) -> Path:
    return Path(git_env.env["TMPDIR"]) / f"git-theta-{os.getuid()}"


def configured_python(git_env: GitEnv) -> str:
    """The interpreter filter.theta.process runs (the one `git theta install` ran with)."""
    process = git_env.run("git", "config", "--global", "filter.theta.process", cwd=git_env.home)
    return shlex.split(process.stdout.decode())[0]


def wire_facts(git_env: GitEnv, env: dict[str, str] | None = None) -> dict[str, str]:
    """The identity and socket path git's filter client in ``git_env`` computes."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "from git_theta_filter import filter_wire as w;"
        "i = w.installation_identity();"
        "print(json.dumps({'identity': i, 'socket': w.rendezvous(i)[1]}))"
    )
    python = configured_python(git_env)
    result = git_env.run(python, "-S", "-c", code, str(PACKAGE.parent), env=env)
    return json.loads(result.stdout)


def wait_for(predicate, what: str, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_server(git_env: GitEnv) -> str:
    """Start a server for ``git_env`` and return its socket once it listens."""
    subprocess.Popen(
        [configured_python(git_env), str(CLIENT), "--serve"],
        env=git_env.env,
        cwd="/",  # as the client starts it
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    path = wire_facts(git_env)["socket"]
    wait_for(lambda: os.path.exists(path), "the server's socket")
    return path


def served_by_server(result: subprocess.CompletedProcess) -> bool:
    return FILTER_IMPORT not in result.stderr


def new_repo(git_env: GitEnv, path: Path) -> Path:
    git_env.run("git", "init", "-q", str(path))
    git_env.theta(path, "track", "*.bin")
    return path


def test_the_first_command_starts_a_server_and_the_next_is_served_by_it(served, tmp_path):
    first = new_repo(served, tmp_path / "first")
    (first / "a.bin").write_bytes(b"\x01" * 4096)
    assert not served_by_server(served.run("git", "add", "a.bin", cwd=first))
    wait_for(lambda: os.path.exists(wire_facts(served)["socket"]), "the server's socket")

    # Another repository, umask and environment: the child takes over the client's.
    second = new_repo(served, tmp_path / "second")
    (second / "b.bin").write_bytes(b"\x02" * 4096)
    added = subprocess.run(
        ["sh", "-c", "umask 077 && git add b.bin"],
        cwd=second,
        env=served.env,
        capture_output=True,
        check=True,
    )
    assert served_by_server(added)
    assert served.git(second, "cat-file", "-p", ":b.bin").startswith("git-theta-manifest 1\n")
    assert stat.S_IMODE((second / ".git" / "theta").stat().st_mode) == 0o700
    assert served.git(second, "status", "--porcelain", "b.bin") == "A  b.bin\n"
    served.git(second, "commit", "-qm", "b")
    (second / "b.bin").unlink()
    checkout = served.run(
        "git", "checkout", "--", "b.bin", cwd=second, env={"GIT_THETA_SKIP_SMUDGE": "1"}
    )
    assert served_by_server(checkout)
    assert (second / "b.bin").read_bytes().startswith(b"git-theta-manifest 1\n")


def test_a_failing_child_reports_its_status_and_message(served, tmp_path):
    start_server(served)
    repo = new_repo(served, tmp_path / "repo")
    broken = b"git-theta-manifest 1\nformat torch-zip\nnot a manifest line\n"
    blob = served.run("git", "hash-object", "-w", "--stdin", cwd=repo, input=broken)
    entry = f"100644,{blob.stdout.decode().strip()},a.bin"
    served.git(repo, "update-index", "--add", "--cacheinfo", entry)
    checkout = served.run("git", "checkout", "--", "a.bin", cwd=repo, check=False)
    assert served_by_server(checkout)
    assert checkout.returncode != 0
    assert b"a.bin" in checkout.stderr and b"git-theta: error:" in checkout.stderr


def connect(path: str) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(2.0)  # well under REQUEST_SECONDS: an answer must come at once
    connection.connect(path)
    return connection


def request_bytes(git_env: GitEnv, **changes) -> bytes:
    fields = {
        "identity": wire_facts(git_env)["identity"],
        "cwd": b"/",
        "umask": 0o022,
        "environ": {b"HOME": git_env.env["HOME"].encode()},
    }
    fields.update(changes)
    return filter_wire.encode_request(filter_wire.FilterRequest(**fields))


def send(connection: socket.socket, payload: bytes, descriptors: int = 3) -> bytes:
    """Send ``payload`` with ``descriptors`` descriptors of /dev/null; the server's answer."""
    null = [os.open(os.devnull, os.O_RDWR) for _ in range(descriptors)]
    try:
        socket.send_fds(connection, [payload[:8]], null)
        connection.sendall(payload[8:])
        return connection.recv(1)
    except (ConnectionResetError, BrokenPipeError):  # closed with some of the request unread
        # (or before the rest was sent: the server drops a request once it sees its
        # descriptors are wrong, which may be before sendall() runs)
        return b""
    finally:
        for fd in null:
            os.close(fd)


def test_a_request_for_another_installation_is_refused(served):
    path = start_server(served)
    with connect(path) as connection:
        assert send(connection, request_bytes(served, identity="another python")) == b"-"
    with connect(path) as connection:
        # The same request with this installation's identity is served (then git's pipe,
        # /dev/null, ends at once): the refusal above was the identity's.
        assert send(connection, request_bytes(served)) == b"+"


@pytest.mark.parametrize(
    "payload, descriptors",
    [
        pytest.param(None, 2, id="two descriptors"),
        pytest.param(None, 4, id="four descriptors"),
        pytest.param(b"ffffffff", 3, id="larger than the limit"),
    ],
)
def test_a_malformed_request_is_dropped_without_an_answer(served, payload, descriptors):
    path = start_server(served)
    with connect(path) as connection:
        assert send(connection, payload or request_bytes(served), descriptors) == b""


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda good: b"2" + good[1:], id="another protocol version"),
        # "tmp" is a directory relative to the server's working directory, "/".
        pytest.param(lambda good: good.replace(b"\0/\0", b"\0tmp\0", 1), id="relative cwd"),
        pytest.param(lambda good: good.replace(b"\x0022\0", b"\x0077777\0", 1), id="long umask"),
        pytest.param(lambda good: good + b"\0NOEQUALS", id="environment entry without ="),
    ],
)
def test_a_request_that_breaks_the_format_is_dropped(served, body):
    path = start_server(served)
    good = request_bytes(served)[8:]
    bad = body(good)
    assert bad != good
    with connect(path) as connection:
        assert send(connection, b"%08x" % len(bad) + bad) == b""


def test_a_client_that_stalls_is_dropped_after_the_request_timeout(served):
    path = start_server(served)
    with connect(path) as connection:
        connection.settimeout(filter_server.REQUEST_SECONDS + 10)
        started = time.monotonic()
        null = [os.open(os.devnull, os.O_RDWR) for _ in range(3)]
        socket.send_fds(connection, [b"0000"], null)
        for fd in null:
            os.close(fd)
        assert connection.recv(1) == b""
        assert time.monotonic() - started < filter_server.REQUEST_SECONDS + 5


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_a_connection_from_another_user_is_refused():
    # An abstract socket: no file system permission keeps the other user out.
    path = f"\0git-theta-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    payload = b"%08x" % 4 + b"1\0x\0"
    child = os.fork()
    if child == 0:  # another user's client, sending three descriptors
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.connect(path)
                socket.send_fds(connection, [payload], [0, 1, 2])
                connection.recv(1)
        finally:
            os._exit(0)
    connection, _ = listener.accept()
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(filter_server.UntrustedClientError, match="user 65534"):
        filter_server.receive_request(connection)
    assert set(os.listdir("/proc/self/fd")) <= before  # nothing received, nothing leaked
    connection.close()
    listener.close()
    os.waitpid(child, 0)


def untrusted_by_mode(directory: Path) -> None:
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)


def untrusted_by_link(directory: Path) -> None:
    target = directory.parent / "elsewhere"
    target.mkdir(mode=0o700)
    directory.symlink_to(target)


def untrusted_by_owner(directory: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)


def test_only_a_private_directory_of_this_user_is_trusted(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert filter_wire.trusted_directory(str(private))
    not_a_directory = tmp_path / "file"
    not_a_directory.touch(mode=0o600)
    assert not filter_wire.trusted_directory(str(not_a_directory))
    assert not filter_wire.trusted_directory(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "make_untrusted", [untrusted_by_mode, untrusted_by_link, untrusted_by_owner]
)
def test_a_runtime_directory_others_may_enter_is_not_used(served, tmp_path, make_untrusted):
    """A socket in a directory another user could reach may be theirs: never connect to
    it, and never listen in it."""
    directory = runtime_directory(served)
    make_untrusted(directory)
    planted = wire_facts(served)["socket"]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(planted)
    listener.listen(1)
    listener.setblocking(False)
    inode = os.stat(planted).st_ino
    repo = new_repo(served, tmp_path / "repo")
    for name in ("a.bin", "b.bin"):
        (repo / name).write_bytes(name.encode() * 1000)
        # A client that connected would have sent git's pipes along, which the planted
        # socket then holds open: the timeout turns that hang into a failure.
        assert not served_by_server(served.run("git", "add", name, cwd=repo, timeout=60))
    with pytest.raises(BlockingIOError):
        listener.accept()  # no client connected
    time.sleep(0.5)
    assert os.stat(planted).st_ino == inode  # and no server took the path over
    listener.close()


def run_on_a_terminal(command: list[str], cwd: Path, env: dict, answers: dict[bytes, bytes]):
    """Run ``command`` with a pseudo-terminal as its controlling terminal, typing the
    answer to each prompt in ``answers`` as it appears; (exit status, terminal output)."""
    child, terminal = pty.fork()
    if child == 0:
        try:
            os.chdir(cwd)
            os.execvpe(command[0], command, env)
        finally:
            os._exit(127)
    output = b""
    pending = dict(answers)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([terminal], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the command and its terminal are gone
            break
        if not chunk:
            break
        output += chunk
        for prompt in [p for p in pending if p in output]:
            os.write(terminal, pending.pop(prompt) + b"\n")
    os.close(terminal)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status), output


def test_a_command_with_a_terminal_is_served_too(served, tmp_path):
    start_server(served)
    repo = new_repo(served, tmp_path / "repo")
    (repo / "a.bin").write_bytes(b"\x01" * 4096)
    status, output = run_on_a_terminal(["git", "add", "a.bin"], repo, served.env, {})
    assert status == 0, output
    assert FILTER_IMPORT not in output
    assert served.git(repo, "cat-file", "-p", ":a.bin").startswith("git-theta-manifest 1\n")


ANSWERING_HELPER = """#!/bin/sh
cat > /dev/null
if [ "$1" = get ]; then echo username=tester; echo password=pw-7c41; fi
"""


def test_a_served_smudge_asks_for_credentials_on_the_clients_terminal(served, tmp_path):
    """git's credential prompt, from a server's child that has no terminal, reaches the
    user's terminal through the client; the password is typed blind."""
    server = LfsServer(tmp_path / "lfs", auth="tester:pw-7c41", git=True).start()
    try:
        server.bare("models")
        url = server.remote_url("models")
        pusher = new_repo(served, tmp_path / "pusher")
        helper = tmp_path / "helper.sh"
        helper.write_text(ANSWERING_HELPER)
        helper.chmod(0o755)
        served.git(pusher, "config", "credential.helper", str(helper))
        served.git(pusher, "remote", "add", "origin", url)
        (pusher / "a.bin").write_bytes(bytes(range(256)) * 64)
        served.git(pusher, "add", ".gitattributes", "a.bin")
        served.git(pusher, "commit", "-qm", "a")
        served.git(pusher, "push", "-q", "origin", "HEAD:main")

        clone = tmp_path / "clone"
        served.run("git", "clone", "-q", url, str(clone), env={"GIT_THETA_SKIP_SMUDGE": "1"})
        (clone / "a.bin").unlink()
        start_server(served)
        status, output = run_on_a_terminal(
            ["git", "checkout", "--", "a.bin"],
            clone,
            served.env,
            {b"Username for": b"tester", b"Password for": b"pw-7c41"},
        )
    finally:
        server.stop()
    assert status == 0, output
    assert b"Username for" in output and b"Password for" in output
    assert FILTER_IMPORT not in output  # served by the server's child
    assert b"pw-7c41" not in output  # typed blind
    assert (clone / "a.bin").read_bytes() == bytes(range(256)) * 64


def test_the_environment_variable_turns_the_server_off(served, tmp_path):
    start_server(served)
    repo = new_repo(served, tmp_path / "repo")
    (repo / "a.bin").write_bytes(b"\x01" * 4096)
    added = served.run("git", "add", "a.bin", cwd=repo, env={"GIT_THETA_FILTER_SERVER": "0"})
    assert not served_by_server(added)


def test_a_server_whose_sources_changed_refuses_and_exits(served, tmp_path):
    """An upgrade or an edit of the package: the next command runs the new code."""
    copy = tmp_path / "copy" / "git_theta_filter"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    client = copy / "filter_client.py"
    served.run("git", "config", "--global", "filter.theta.process", f"{sys.executable} -S {client}")
    repo = new_repo(served, tmp_path / "repo")
    (repo / "a.bin").write_bytes(b"\x01" * 4096)
    served.git(repo, "add", "a.bin")

    def server_pids() -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            try:
                command = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(client).encode() in command and b"--serve" in command:
                pids.append(int(entry))
        return pids

    old = wait_for(server_pids, "the server started from the copy")
    wait_for(lambda: list(runtime_directory(served).glob("*.sock")), "its socket")
    (repo / "b.bin").write_bytes(b"\x02" * 4096)
    assert served_by_server(served.run("git", "add", "b.bin", cwd=repo))

    with open(copy / "units.py", "a") as source:
        source.write("\n# edited\n")
    (repo / "c.bin").write_bytes(b"\x03" * 4096)
    assert not served_by_server(served.run("git", "add", "c.bin", cwd=repo))
    wait_for(lambda: not set(old) & set(server_pids()), "the old server to exit")


def test_a_server_with_a_thread_does_not_fork(served):
    """A warm import that started a thread would leave its locks held in every child."""
    code = (
        "import threading, time; from git_theta_filter import filter_server;"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start();"
        "filter_server.serve_until_idle()"
    )
    served.run(configured_python(served), "-c", code, timeout=20)
    assert not list(runtime_directory(served).glob("*.sock"))


def test_a_served_command_reports_its_usage_when_asked(served, tmp_path):
    """time and getrusage see the client only: the child appends its own usage."""
    start_server(served)
    repo = new_repo(served, tmp_path / "repo")
    usage = tmp_path / "usage"
    (repo / "a.bin").write_bytes(b"\x01" * 4096)
    served.run("git", "add", "a.bin", cwd=repo, env={"GIT_THETA_FILTER_USAGE": str(usage)})
    [line] = usage.read_text().splitlines()
    peak_kib, cpu_seconds = line.split()
    assert int(peak_kib) > 10_000  # an interpreter with the filter loaded
    assert 0 < float(cpu_seconds) < 60


def test_a_client_in_another_locale_gets_a_server_of_its_own(served):
    """File names and messages are encoded as the locale says, fixed when Python starts:
    two clients whose environments differ only in the locale must not share a server."""
    # Without these, Python coerces the C locale to UTF-8 and the two would agree.
    served.env.update(PYTHONCOERCECLOCALE="0", PYTHONUTF8="0")
    utf8 = wire_facts(served, env={"LC_ALL": "C.utf8"})["identity"]
    ascii_only = wire_facts(served, env={"LC_ALL": "POSIX"})["identity"]
    assert "encodings=ascii" in ascii_only
    assert utf8 != ascii_only
