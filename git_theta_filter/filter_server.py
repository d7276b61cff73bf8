"""The filter server: a warm process that serves git for :mod:`filter_client`, one fork per client.

It imports the filter's modules once, then listens on this user's socket for
this installation (:mod:`filter_wire`, docs/filter-server.md). For each
client it forks a child, which checks the request, takes over the client's
standard streams, working directory, umask and environment, and serves git's
filter protocol exactly as ``git theta filter-process`` would, then sends the
exit status back. Nothing of one request outlives its child.

The server exits when it has been idle for ``IDLE_SECONDS``, when its socket
was removed or replaced (another server took over, or the user removed the
directory), or when this package's sources changed (an upgrade or an edit):
a request that finds the sources changed is refused, so that its client
serves git itself with the new code and starts a new server.
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import socket
import threading
import time

from . import filter_wire

__all__ = [
    "IDLE_SECONDS",
    "USAGE_VARIABLE",
    "UntrustedClientError",
    "serve_until_idle",
    "receive_request",
]

# Long enough for a training loop that commits every few minutes; an idle server
# holds 25 to 50 MB of memory.
IDLE_SECONDS = 300.0
# How often an idle server looks at its socket and sources.
CHECK_SOCKET_SECONDS = 2.0
# A client sends its whole request at once; a slower one is not a client of ours.
REQUEST_SECONDS = 5.0
DESCRIPTORS = 3  # the client's stdin, stdout and stderr
# Names a file that each child appends its peak RSS (KiB) and CPU seconds to.
USAGE_VARIABLE = "GIT_THETA_FILTER_USAGE"

# What a clean or smudge imports, so that a child starts with it loaded (numpy's
# import alone took 0.1 s of CPU of every large add). A process with threads must
# not fork, and numpy's BLAS starts a thread per core at import: it is kept to one
# first (_ONE_BLAS_THREAD), which starts none; nothing here calls BLAS.
_WARM_MODULES = (
    "git_theta_filter.cli",
    "git_theta_filter.cli.filter_process",
    "git_theta_filter.filter",
    "git_theta_filter.clean",
    "git_theta_filter.smudge",
    "git_theta_filter.hooks",
    # The hooks check reads the work tree's .gitattributes with it (lfs_interop.lfs_in_use).
    "git_theta_filter.attributes",
    "git_theta_filter.locks",
    "git_theta_filter.formats.torch_zip",
    "git_theta_filter.formats.safetensors_file",
    "git_theta_filter.store.local",
    "concurrent.futures.thread",
    "zstandard",
    "numpy",
    # The block digests of large objects (store/encoded.py); it starts no thread.
    "blake3",
)
_ONE_BLAS_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class UntrustedClientError(ConnectionError):
    """A connection from another user, or one that broke the request format."""


def serve_until_idle() -> None:
    """Serve clients until idle, replaced or outdated; return without serving when this
    user's runtime directory cannot be made private or the socket path is too long."""
    identity = filter_wire.installation_identity()
    place = filter_wire.rendezvous(identity)
    if place is None or not _private_directory(place[0]):
        return
    path = place[1]
    if not _warm_up():
        return  # a warm import started a thread; forking now could deadlock the children
    sources = _source_snapshot()
    listener, inode = _listen(path)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    # Objects made so far stay out of the collector, so children share their pages.
    gc.freeze()
    last_request = time.monotonic()

    def outdated() -> bool:
        """Another server took the socket over, or this package's code changed."""
        return not _still_listening(path, inode) or _source_snapshot() != sources

    try:
        while True:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                if time.monotonic() - last_request >= IDLE_SECONDS or outdated():
                    return
                continue
            last_request = time.monotonic()
            if outdated():
                _refuse(connection)
                return
            _fork_child(listener, connection, identity)
    finally:
        if _still_listening(path, inode):
            os.unlink(path)
        listener.close()


def _warm_up() -> bool:
    """Import what the children use; whether this process may still fork (it holds no
    thread, Python's or native)."""
    for name in _ONE_BLAS_THREAD:
        os.environ[name] = "1"  # children take over their client's environment
    for name in _WARM_MODULES:
        importlib.import_module(name)
    try:
        native = len(os.listdir("/proc/self/task"))
    except OSError:  # no /proc: Python's count only
        native = 1
    return threading.active_count() == 1 and native == 1


def _private_directory(directory: str) -> bool:
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    return filter_wire.trusted_directory(directory)


def _listen(path: str) -> tuple[socket.socket, int]:
    """Listen on ``path``, replacing any socket there at once (rename is atomic), so a
    client never finds the path missing while servers take over from each other."""
    staging = f"{path}.{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(staging)
    except FileNotFoundError:
        pass
    listener.bind(staging)
    listener.listen(16)
    os.rename(staging, path)
    listener.settimeout(CHECK_SOCKET_SECONDS)
    return listener, os.stat(path).st_ino


def _still_listening(path: str, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def _source_snapshot() -> list[tuple[str, int, int]]:
    """This package's Python files with their change times and sizes."""
    package = os.path.dirname(os.path.abspath(__file__))
    snapshot = []
    for root, directories, files in os.walk(package):
        directories[:] = sorted(d for d in directories if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                info = os.stat(os.path.join(root, name))
                snapshot.append((os.path.join(root, name), info.st_mtime_ns, info.st_size))
    return snapshot


def _refuse(connection: socket.socket) -> None:
    try:
        connection.sendall(filter_wire.REFUSED)
    except OSError:
        pass
    connection.close()


def _fork_child(listener: socket.socket, connection: socket.socket, identity: str) -> None:
    pid = os.fork()
    if pid:
        connection.close()
        return
    status = 1
    try:
        listener.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the filter waits for its own processes
        status = _serve_client(connection, identity)
    finally:
        os._exit(status)


def _serve_client(connection: socket.socket, identity: str) -> int:
    try:
        request, descriptors = receive_request(connection)
    except (OSError, filter_wire.MalformedRequestError):
        return 1
    if request.identity != identity:
        for fd in descriptors:
            os.close(fd)
        _refuse(connection)
        return 0
    _take_over(request, descriptors)
    connection.sendall(filter_wire.SERVING)

    from .cli._errors import run_reporting
    from .cli.filter_process import serve_git

    status = run_reporting(serve_git)
    _report_usage(os.environ.get(USAGE_VARIABLE))
    connection.sendall(bytes([status & 0xFF]))
    return 0


def _report_usage(path: str | None) -> None:
    """Append this child's peak RSS and CPU time to ``path``, when the user asked for it.

    The client's own resource usage, which is what a benchmark or ``time`` sees,
    does not include the child that did the work; a failure to report is not the
    command's failure.
    """
    if not path:
        return
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    line = f"{max(own.ru_maxrss, children.ru_maxrss)} {cpu:.6f}\n".encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError:
        pass


def receive_request(connection: socket.socket) -> tuple[filter_wire.FilterRequest, list[int]]:
    """The request on ``connection`` and the three descriptors that came with it.

    Only this user's processes may ask (SO_PEERCRED), within ``REQUEST_SECONDS``,
    with exactly three descriptors and at most ``MAX_REQUEST_BYTES``; anything
    else raises, with every received descriptor closed.
    """
    uid = filter_wire.peer_uid(connection)
    if uid != os.getuid():
        raise UntrustedClientError(f"a client of user {uid} connected to user {os.getuid()}'s")
    connection.settimeout(REQUEST_SECONDS)
    header, descriptors, flags, _ = socket.recv_fds(
        connection, filter_wire.LENGTH_DIGITS, DESCRIPTORS + 1
    )
    try:
        if flags & socket.MSG_CTRUNC or len(descriptors) != DESCRIPTORS:
            raise UntrustedClientError(f"a request comes with {DESCRIPTORS} descriptors")
        header += filter_wire.receive_exactly(connection, filter_wire.LENGTH_DIGITS - len(header))
        body = filter_wire.receive_exactly(connection, filter_wire.body_length(header))
        return filter_wire.decode_request(body), descriptors
    except BaseException:
        for fd in descriptors:
            os.close(fd)
        raise


def _take_over(request: filter_wire.FilterRequest, descriptors: list[int]) -> None:
    """Become the client, as far as the filter can tell: its streams, working directory,
    umask and environment."""
    for target, fd in enumerate(descriptors):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request.cwd)
    os.umask(request.umask)
    os.environb.clear()
    os.environb.update(request.environ)
