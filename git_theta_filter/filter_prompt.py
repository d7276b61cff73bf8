"""Prompts from a server's child, asked on its client's terminal (docs/filter-server.md).

A server's child has no controlling terminal, but a smudge that downloads may
need git's credential prompt or ssh's passphrase prompt. A client that has a
terminal therefore listens on a prompt socket of its own, in the private
runtime directory, and names in the environment it hands over an askpass
program (``SSH_ASKPASS``, which git uses too when neither ``GIT_ASKPASS`` nor
``core.askPass`` is set): ``filter_client.py --askpass <prompt>``, which
sends the prompt to that socket and prints the answer the client read from
its terminal. Like the client, this runs before ``site`` and imports only
builtin modules.
"""

from __future__ import annotations

import os
import sys

from . import filter_wire

__all__ = [
    "PromptBridge",
    "PromptBridgeUnavailableError",
    "askpass",
    "PROMPT_SOCKET_VARIABLE",
    "MAX_PROMPT_BYTES",
]

PROMPT_SOCKET_VARIABLE = "GIT_THETA_PROMPT_SOCKET"
# A prompt and an answer are a line each: a passphrase, a user name, a yes/no.
MAX_PROMPT_BYTES = 4096
_PROMPT_SECONDS = 5.0  # for the askpass program to send its prompt, once connected
_FALSE = ("0", "false", "no", "off")


class PromptBridgeUnavailableError(OSError):
    """Prompts would need the bridge, and it cannot be made (the askpass program could not
    run from a noexec file system, the socket cannot be made)."""


class PromptBridge:
    """The client's side: a listening socket, and the environment that leads to it."""

    def __init__(self, listener, path: str, script: str) -> None:
        self.listener = listener
        self._path = path
        self._script = script

    @classmethod
    def open(cls, directory: str, environ: dict[bytes, bytes]) -> PromptBridge | None:
        """A bridge in ``directory`` (already trusted), or None when the user's own
        askpass or ``GIT_TERMINAL_PROMPT=0`` decides how to prompt.

        Raises :class:`PromptBridgeUnavailableError` when prompts need a bridge that
        cannot be made here: the client then serves git itself, on its terminal.
        """
        if b"SSH_ASKPASS" in environ:
            return None
        if environ.get(b"GIT_TERMINAL_PROMPT", b"").decode().lower() in _FALSE:
            return None
        import _socket

        path = os.path.join(directory, f"prompt-{os.getpid()}.sock")
        if not filter_wire.fits_a_socket(path):
            raise PromptBridgeUnavailableError(f"{path} is too long for a socket")
        if os.statvfs(directory).f_flag & os.ST_NOEXEC:
            raise PromptBridgeUnavailableError(f"{directory} is on a file system mounted noexec")
        script = _askpass_script(directory)
        listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            try:
                os.unlink(path)  # left by a killed client whose pid was reused
            except FileNotFoundError:
                pass
            listener.bind(path)
            listener.listen(4)
        except OSError as exc:
            listener.close()
            raise PromptBridgeUnavailableError(f"cannot listen on {path}: {exc}") from None
        return cls(listener, path, script)

    def environment(self, environ: dict[bytes, bytes]) -> dict[bytes, bytes]:
        """``environ`` with the askpass program and this bridge's socket named."""
        bridged = dict(environ)
        bridged[b"SSH_ASKPASS"] = os.fsencode(self._script)
        # ssh asks the askpass program only without a terminal or when told to.
        bridged.setdefault(b"SSH_ASKPASS_REQUIRE", b"prefer")
        bridged[PROMPT_SOCKET_VARIABLE.encode()] = os.fsencode(self._path)
        return bridged

    def answer_one(self) -> None:
        """Take one askpass connection, ask its prompt on the terminal, send the answer.

        Any failure (another user, a malformed prompt, no terminal) drops the
        connection: the askpass program then fails, as a refused prompt does.
        """
        import _socket

        fd, _ = self.listener._accept()  # _socket's accept: the socket module is not loaded
        connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
        try:
            if not filter_wire.same_user(connection):
                return
            connection.settimeout(_PROMPT_SECONDS)
            prompt = filter_wire.receive_message(connection, MAX_PROMPT_BYTES)
            connection.settimeout(None)  # the user takes as long as they take
            answer = _ask_on_terminal(prompt)
            connection.sendall(filter_wire.encode_message(answer))
        except (OSError, filter_wire.MalformedRequestError):
            pass
        finally:
            connection.close()

    def close(self) -> None:
        self.listener.close()
        try:
            os.unlink(self._path)
        except OSError:
            pass


def _askpass_script(directory: str) -> str:
    """An executable that runs ``filter_client.py --askpass``, made once per installation
    in the private runtime directory (askpass programs are run without a shell)."""
    import zlib

    client = os.path.join(os.path.dirname(os.path.abspath(__file__)), "filter_client.py")
    text = f'#!/bin/sh\nexec {_quoted(sys.executable)} -S {_quoted(client)} --askpass "$1"\n'
    path = os.path.join(directory, f"askpass-{zlib.crc32(text.encode()):08x}")
    if not os.path.exists(path):
        staging = f"{path}.{os.getpid()}"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o700)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.rename(staging, path)
    return path


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _ask_on_terminal(prompt: bytes) -> bytes:
    """The line the user types after ``prompt``; typed blind unless the prompt asks for a
    user name or a yes/no, as git's and ssh's own prompts do."""
    import termios

    visible = prompt.lower().startswith(b"username") or b"(yes/no" in prompt
    terminal = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    try:
        settings = None
        if not visible:
            # Echo goes off before the prompt shows, so nothing typed after it is echoed.
            settings = termios.tcgetattr(terminal)
            quiet = list(settings)
            quiet[3] &= ~termios.ECHO
            termios.tcsetattr(terminal, termios.TCSANOW, quiet)
        try:
            os.write(terminal, prompt)
            line = _read_line(terminal)
        finally:
            if settings is not None:
                termios.tcsetattr(terminal, termios.TCSANOW, settings)
                os.write(terminal, b"\n")
    finally:
        os.close(terminal)
    return line


def _read_line(fd: int) -> bytes:
    line = b""
    while len(line) <= MAX_PROMPT_BYTES:
        byte = os.read(fd, 1)
        if not byte or byte == b"\n":
            return line.rstrip(b"\r")
        line += byte
    raise filter_wire.MalformedRequestError(f"an answer over {MAX_PROMPT_BYTES} bytes")


def askpass(prompt: str) -> int:
    """The askpass program: print the answer to ``prompt`` from the client's terminal."""
    import _socket

    path = os.environ.get(PROMPT_SOCKET_VARIABLE)
    if not path:
        print("git-theta: no prompt socket to ask through", file=sys.stderr)
        return 1
    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        connection.connect(path)
        encoded = os.fsencode(prompt)[:MAX_PROMPT_BYTES]
        connection.sendall(filter_wire.encode_message(encoded))
        answer = filter_wire.receive_message(connection, MAX_PROMPT_BYTES)
    except (OSError, filter_wire.MalformedRequestError):
        return 1
    finally:
        connection.close()
    sys.stdout.buffer.write(answer + b"\n")
    sys.stdout.flush()
    return 0
