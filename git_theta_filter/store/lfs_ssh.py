"""``git-lfs-authenticate`` over ssh: how an ssh remote hands out its LFS href and headers.

git-lfs's contract (server discovery, "SSH"): the client runs ::

    ssh [-p <port>] [<user>@]<host> git-lfs-authenticate <path> <upload|download>

and the server prints JSON shaped like a batch action: an optional ``href``
(the LFS endpoint to use instead of the https one derived from the remote),
``header`` (added to every batch request) and ``expires_in``/``expires_at``.
A non-zero exit is a refusal, reported with what ssh wrote on stderr.

The ssh program is git's: ``GIT_SSH_COMMAND``, else ``GIT_SSH``, else
``core.sshCommand`` (resolved by the caller), else ``ssh``. Answers are
reused until five seconds before they expire.
"""

from __future__ import annotations

import os
import selectors
import shlex
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import PurePath

from .base import StoreUnavailableError
from .lfs_endpoint import SshTarget
from .lfs_protocol import (
    MAX_RESPONSE_BYTES,
    LfsProtocolError,
    Operation,
    SshAuthentication,
    parse_ssh_authenticate,
    printable,
)

__all__ = ["SshAuthenticator", "SshAuthenticationError", "ssh_command_line"]

# Reuse an answer only while it has longer than this to live.
EXPIRY_MARGIN = 5.0
_TIMEOUT = 60
_READ_SIZE = 64 << 10
# What is kept of ssh's stderr: the end, where its last line is.
_STDERR_KEPT = 4096


class SshAuthenticationError(StoreUnavailableError):
    """``git-lfs-authenticate`` failed or could not be run."""


def ssh_command_line(
    target: SshTarget,
    operation: Operation,
    *,
    ssh_command: str | None = None,
    ssh_program: str | None = None,
    variant: str | None = None,
) -> list[str]:
    """The argv that runs ``git-lfs-authenticate`` on ``target``.

    ``ssh_command`` is a shell command (``GIT_SSH_COMMAND``/``core.sshCommand``), run
    through ``sh`` with the arguments appended as git does; ``ssh_program`` is a
    program path (``GIT_SSH``); ``variant`` is git's ``ssh.variant``/``GIT_SSH_VARIANT``
    (else guessed from the program's name, as git does).
    """
    if target.user_and_host.startswith("-"):
        raise ValueError("an ssh host may not start with '-'")
    program = ssh_program or "ssh"
    if ssh_command:
        words = shlex.split(ssh_command)
        program = words[0] if words else "ssh"
    variant = (variant or PurePath(program).name).lower().removesuffix(".exe")
    args: list[str] = []
    if target.port is not None:
        args += ["-P" if variant in ("plink", "tortoiseplink") else "-p", str(target.port)]
    if variant == "ssh":
        args.append("--")  # nothing after this is an option, whatever the host says
    # The remote side runs this through a shell: quote the path.
    args += [target.user_and_host, f"git-lfs-authenticate {shlex.quote(target.path)} {operation}"]
    if ssh_command:
        return ["sh", "-c", f'{ssh_command} "$@"', ssh_command, *args]
    return [program, *args]


class SshAuthenticator:
    """Runs ``git-lfs-authenticate`` for one ssh target, caching each operation's answer."""

    def __init__(
        self,
        target: SshTarget,
        url: str,
        *,
        ssh_command: str | None = None,
        ssh_program: str | None = None,
        variant: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.target = target
        self._variant = variant
        self._url = url
        self._ssh_command = ssh_command
        self._ssh_program = ssh_program
        self._env = dict(os.environ if env is None else env)
        self._answers: dict[str, SshAuthentication] = {}
        self._lock = threading.Lock()

    def authenticate(self, operation: Operation) -> SshAuthentication:
        """The current answer for ``operation``, asking the server again once it nears expiry."""
        with self._lock:
            cached = self._answers.get(operation)
            if cached is not None and not cached.expires_within(EXPIRY_MARGIN):
                return cached
            answer = self._ask(operation)
            self._answers[operation] = answer
            return answer

    def _ask(self, operation: Operation) -> SshAuthentication:
        try:
            argv = ssh_command_line(
                self.target,
                operation,
                ssh_command=self._ssh_command,
                ssh_program=self._ssh_program,
                variant=self._variant,
            )
        except ValueError as exc:  # an unbalanced quote in the ssh command, a host like "-x"
            raise SshAuthenticationError(self._url, f"cannot run ssh: {exc}") from None
        started = time.time()
        try:
            returncode, stdout, stderr = _run(argv, self._env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SshAuthenticationError(
                self._url, f"cannot run git-lfs-authenticate over ssh: {printable(str(exc))}"
            ) from None
        if len(stdout) > MAX_RESPONSE_BYTES:
            raise LfsProtocolError(self._url, f"more than {MAX_RESPONSE_BYTES} bytes")
        if returncode != 0:
            lines = stderr.decode("utf-8", "replace").strip().splitlines()
            said = printable(lines[-1]) if lines else f"exit code {returncode}"
            raise SshAuthenticationError(
                self._url,
                f"git-lfs-authenticate on {self.target.user_and_host} failed: {said}",
            )
        return parse_ssh_authenticate(self._url, stdout, received_at=started)


def _run(argv: list[str], env: Mapping[str, str]) -> tuple[int, bytes, bytes]:
    """Run ssh: its exit code, its output up to one byte past an answer's limit (ssh is
    killed there) and the end of its stderr. The server writes both; neither may cost
    more memory than that, nor the run more than :data:`_TIMEOUT` seconds."""
    deadline = time.monotonic() + _TIMEOUT
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = bytearray(), bytearray()
    with process, selectors.DefaultSelector() as selector:
        try:
            selector.register(process.stdout, selectors.EVENT_READ, stdout)
            selector.register(process.stderr, selectors.EVENT_READ, stderr)
            while selector.get_map() and len(stdout) <= MAX_RESPONSE_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(argv, _TIMEOUT)
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, _READ_SIZE)
                    if not chunk:
                        selector.unregister(key.fileobj)
                    key.data.extend(chunk)
                del stderr[:-_STDERR_KEPT]  # its last line is all that is shown
            if len(stdout) > MAX_RESPONSE_BYTES:
                process.kill()
            returncode = process.wait(max(0.0, deadline - time.monotonic()))
        except BaseException:
            process.kill()  # else leaving the block would wait for it
            raise
    return returncode, bytes(stdout), bytes(stderr)
