"""The prompt bridge's guards (filter_prompt.py): who may ask, how much, for how long.

The bridge itself, a served smudge asking for credentials on the client's
terminal, is tested end to end in tests/integration/test_filter_server.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading

import pytest

from git_theta_filter import filter_prompt, filter_wire


@pytest.fixture
def bridge(monkeypatch):
    """A bridge whose terminal is a list: prompts asked, each answered "secret"."""
    directory = tempfile.mkdtemp(prefix="theta-", dir="/tmp")  # socket paths are short
    asked: list[bytes] = []

    def ask(prompt: bytes) -> bytes:
        asked.append(prompt)
        return b"secret"

    monkeypatch.setattr(filter_prompt, "_ask_on_terminal", ask)
    bridge = filter_prompt.PromptBridge.open(directory, {})
    assert bridge is not None
    bridge.asked = asked
    yield bridge
    bridge.close()
    shutil.rmtree(directory)


def ask_in_a_thread(bridge, payload: bytes) -> list[bytes]:
    """Send ``payload`` to the bridge as an askpass program would; what came back."""
    answers: list[bytes] = []
    path = bridge.environment({})[filter_prompt.PROMPT_SOCKET_VARIABLE.encode()]

    def client() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(10)
            connection.connect(os.fsdecode(path))
            connection.sendall(payload)
            try:
                answers.append(connection.recv(100))
            except ConnectionResetError:  # closed with some of the prompt unread
                answers.append(b"")

    thread = threading.Thread(target=client)
    thread.start()
    bridge.answer_one()
    thread.join(10)
    return answers


def test_a_prompt_is_asked_and_answered(bridge):
    answers = ask_in_a_thread(bridge, filter_wire.encode_message(b"Password for 'x': "))
    assert bridge.asked == [b"Password for 'x': "]
    assert answers == [filter_wire.encode_message(b"secret")]


def test_a_prompt_over_the_limit_is_dropped_unasked(bridge):
    too_long = b"x" * (filter_prompt.MAX_PROMPT_BYTES + 1)
    answers = ask_in_a_thread(bridge, filter_wire.encode_message(too_long))
    assert bridge.asked == [] and answers == [b""]


def test_an_askpass_that_sends_nothing_is_dropped_after_the_timeout(bridge, monkeypatch):
    monkeypatch.setattr(filter_prompt, "_PROMPT_SECONDS", 0.2)
    path = os.fsdecode(bridge.environment({})[filter_prompt.PROMPT_SOCKET_VARIABLE.encode()])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(path)
        answering = threading.Thread(target=bridge.answer_one, daemon=True)
        answering.start()
        answering.join(5)
        assert not answering.is_alive(), "the bridge waited for a prompt that never came"
    assert bridge.asked == []


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_a_prompt_from_another_user_is_not_answered(bridge):
    path = os.fsdecode(bridge.environment({})[filter_prompt.PROMPT_SOCKET_VARIABLE.encode()])
    # Opened up on purpose: the directory's mode would stop the other user before the bridge.
    os.chmod(os.path.dirname(path), 0o755)
    os.chmod(path, 0o777)
    child = os.fork()
    if child == 0:
        code = 2  # could not even try
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(10)
                connection.connect(path)
                code = 3  # connected: 3 unless an answer comes
                connection.sendall(filter_wire.encode_message(b"Password: "))
                code = 0 if connection.recv(100) else 3
        except OSError:
            pass  # dropped (a broken pipe, a reset)
        finally:
            os._exit(code)
    bridge.answer_one()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 3
    assert bridge.asked == []


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({b"SSH_ASKPASS": b"/usr/bin/ssh-askpass"}, id="the user's own askpass"),
        pytest.param({b"GIT_TERMINAL_PROMPT": b"0"}, id="prompts turned off"),
        pytest.param({b"GIT_TERMINAL_PROMPT": b"false"}, id="prompts turned off, false"),
    ],
)
def test_the_users_own_prompt_settings_keep_the_bridge_out(environ, tmp_path):
    assert filter_prompt.PromptBridge.open(str(tmp_path), environ) is None


def test_the_bridge_names_its_askpass_and_keeps_the_users_ssh_setting():
    directory = tempfile.mkdtemp(prefix="theta-", dir="/tmp")
    try:
        bridge = filter_prompt.PromptBridge.open(directory, {})
        assert bridge is not None
        environ = bridge.environment({b"SSH_ASKPASS_REQUIRE": b"never", b"HOME": b"/h"})
        bridge.close()
        assert environ[b"HOME"] == b"/h" and environ[b"SSH_ASKPASS_REQUIRE"] == b"never"
        script = os.fsdecode(environ[b"SSH_ASKPASS"])
        assert os.path.dirname(script) == directory and os.access(script, os.X_OK)
        assert os.stat(script).st_mode & 0o077 == 0
    finally:
        shutil.rmtree(directory)


def test_a_noexec_runtime_directory_makes_no_bridge(monkeypatch, tmp_path):
    """The askpass program could not run from it: the client must serve git itself."""

    class NoExec:
        f_flag = os.ST_NOEXEC

    monkeypatch.setattr(os, "statvfs", lambda path: NoExec())
    with pytest.raises(filter_prompt.PromptBridgeUnavailableError, match="noexec"):
        filter_prompt.PromptBridge.open(str(tmp_path), {})
    assert not list(tmp_path.iterdir())


def test_a_runtime_directory_too_long_for_a_socket_makes_no_bridge(tmp_path):
    """bind() would fail, or on some systems cut the address: the client serves git itself."""
    deep = tmp_path / ("d" * 100) / ("e" * 100)
    deep.mkdir(parents=True)
    with pytest.raises(filter_prompt.PromptBridgeUnavailableError, match="too long for a socket"):
        filter_prompt.PromptBridge.open(str(deep), {})
    assert not list(deep.iterdir())


def test_a_client_that_cannot_bridge_serves_git_itself(monkeypatch):
    """relay_to_server gives up (None) before it connects when prompts cannot be bridged."""
    from git_theta_filter import filter_client

    directory = tempfile.mkdtemp(prefix="theta-", dir="/tmp")
    path = os.path.join(directory, "server.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.setblocking(False)
    monkeypatch.setattr(filter_wire, "rendezvous", lambda identity: (directory, path))
    monkeypatch.setattr(filter_client, "_in_a_terminal", lambda: True)

    def unavailable(cls, directory, environ):
        raise filter_prompt.PromptBridgeUnavailableError("noexec")

    monkeypatch.setattr(filter_prompt.PromptBridge, "open", classmethod(unavailable))
    try:
        assert filter_client.relay_to_server() is None
        with pytest.raises(BlockingIOError):
            listener.accept()  # the client never connected
    finally:
        listener.close()
        shutil.rmtree(directory)
