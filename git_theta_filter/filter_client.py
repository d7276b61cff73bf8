"""The command git runs as ``filter.theta.process``: hand git's pipes to a warm filter server.

``git theta install`` configures ``<python> -S <this file>``. Without ``site``
and with only builtin modules, this starts in a few milliseconds; it connects
to this user's server for this installation (docs/filter-server.md), passes
its standard streams, working directory, umask and environment, and waits for
the exit status of the server's child, which speaks git's filter protocol on
those streams. When there is no usable server, it serves git itself, as
``git theta filter-process`` does, and starts a server for the next command.
``GIT_THETA_FILTER_SERVER=0`` turns the server off; it is used on Linux only.

A server's child has no terminal: a client that has one answers the child's
prompts (git's credential prompt, ssh's passphrase prompt) on it, through
:mod:`filter_prompt`; ``--askpass <prompt>`` is that module's askpass program.
"""

import os
import sys

_ANSWER_SECONDS = 5.0


def main() -> None:
    # Run as a script: sys.path[0] is this package's directory, not its parent.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if sys.argv[1:] == ["--serve"]:
        _load_site()
        from git_theta_filter.filter_server import serve_until_idle

        serve_until_idle()
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--askpass":
        from git_theta_filter.filter_prompt import askpass

        os._exit(askpass(sys.argv[2]))
    # Linux only: the server trusts a connection by its peer's credentials (SO_PEERCRED).
    use_server = sys.platform == "linux" and os.environ.get("GIT_THETA_FILTER_SERVER") != "0"
    if use_server:
        status = relay_to_server()
        if status is not None:
            os._exit(status)
    answered = _answer_git()
    _load_site()
    if use_server:
        _start_server()
    from git_theta_filter.cli._errors import run_reporting
    from git_theta_filter.cli.filter_process import run

    sys.exit(run_reporting(lambda: run(None, answered)))


def _answer_git():
    """Git's handshake, answered before ``site``, numpy and the store are loaded (git
    waits for it, and it needs none of them); or the error that stopped it, which is
    reported as any other once the command is loaded."""
    from git_theta_filter.filter_handshake import answer_git

    try:
        return answer_git()
    except Exception as exc:
        return exc


def _load_site() -> None:
    import site

    site.main()


def _in_a_terminal() -> bool:
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        return False
    return True


def relay_to_server() -> int | None:
    """Have the server serve git on our streams; its child's exit status, or None
    when no server took the request (none running, or it refused)."""
    import _socket

    from git_theta_filter import filter_wire

    identity = filter_wire.installation_identity()
    place = filter_wire.rendezvous(identity)
    if place is None or not filter_wire.trusted_directory(place[0]):
        return None
    directory, path = place
    environ = dict(os.environb.items())
    prompts = None
    if _in_a_terminal():
        from git_theta_filter.filter_prompt import PromptBridge

        try:
            prompts = PromptBridge.open(directory, environ)
        except OSError:
            return None  # prompts could not reach the terminal from the server's child
        if prompts is not None:
            environ = prompts.environment(environ)
    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            connection.settimeout(_ANSWER_SECONDS)
            connection.connect(path)
            umask = os.umask(0o022)
            os.umask(umask)
            request = filter_wire.FilterRequest(identity, os.getcwdb(), umask, environ)
            payload = filter_wire.encode_request(request)
            descriptors = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2))
            ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, descriptors)]
            connection.sendmsg([payload[: filter_wire.LENGTH_DIGITS]], ancillary)
            connection.sendall(payload[filter_wire.LENGTH_DIGITS :])
            if connection.recv(1) != filter_wire.SERVING:
                return None
        except (OSError, filter_wire.MalformedRequestError):
            return None
        # The child owns git's streams now: from here on, this process only answers its
        # prompts and waits for its status.
        return _status_of_child(connection, prompts)
    finally:
        connection.close()
        if prompts is not None:
            prompts.close()


def _status_of_child(connection, prompts) -> int:
    """The child's exit status; 1 when it died without sending one (git has seen it die)."""
    import select

    connection.settimeout(None)
    waiting = [connection] if prompts is None else [connection, prompts.listener]
    try:
        while True:
            readable, _, _ = select.select(waiting, [], [])
            if connection in readable:
                status = connection.recv(1)
                return status[0] if status else 1
            prompts.answer_one()
    except OSError:
        return 1


def _start_server() -> None:
    """Start a server in the background for the next filter command; it exits when idle."""
    import subprocess

    try:
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        pass  # no server: every command serves git itself, as before


if __name__ == "__main__":
    main()
