"""The filter server's wire format and rendezvous: where its socket lives, what a client sends.

git starts ``filter.theta.process`` once per add, commit, status or checkout,
and a Python interpreter with this package's imports takes longer to start
than git-lfs takes for a whole small commit. So the configured command is a
small client (:mod:`filter_client`) that hands git's pipes to a warm server
(:mod:`filter_server`), which forks a child per client to serve git. The
format is specified in docs/filter-server.md; this module is both sides'
only shared code and imports nothing beyond the standard library's builtins,
because the client runs it before ``site`` is loaded.
"""

from __future__ import annotations

import os
import stat
import sys
import zlib

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_REQUEST_BYTES",
    "LENGTH_DIGITS",
    "SERVING",
    "REFUSED",
    "FilterRequest",
    "MalformedRequestError",
    "encode_request",
    "decode_request",
    "installation_identity",
    "runtime_directory",
    "rendezvous",
    "fits_a_socket",
    "trusted_directory",
    "peer_uid",
    "same_user",
    "encode_message",
    "receive_message",
]

PROTOCOL_VERSION = "1"
# A request is the environment and a few short fields; a larger one is not a client of ours.
MAX_REQUEST_BYTES = 1 << 20
LENGTH_DIGITS = 8
# The server's one-byte answers to a request.
SERVING = b"+"
REFUSED = b"-"
# Linux's sun_path holds 108 bytes with the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107


class MalformedRequestError(ValueError):
    """A request that does not follow docs/filter-server.md."""


class FilterRequest:
    """What a client asks: serve git for this installation, from ``cwd``, with this
    umask and environment (the client's own; git set it up for its filter)."""

    __slots__ = ("identity", "cwd", "umask", "environ")

    def __init__(self, identity: str, cwd: bytes, umask: int, environ: dict[bytes, bytes]) -> None:
        self.identity = identity
        self.cwd = cwd
        self.umask = umask
        self.environ = environ


def encode_request(request: FilterRequest) -> bytes:
    """The request's bytes: 8 hex digits of length, then NUL-separated fields."""
    fields = [
        PROTOCOL_VERSION.encode(),
        request.identity.encode("utf-8", "surrogateescape"),
        request.cwd,
        b"%o" % request.umask,
        *(key + b"=" + value for key, value in request.environ.items()),
    ]
    body = b"\0".join(fields)
    if len(body) > MAX_REQUEST_BYTES:
        raise MalformedRequestError(f"request of {len(body)} bytes exceeds {MAX_REQUEST_BYTES}")
    return b"%08x" % len(body) + body


def body_length(header: bytes) -> int:
    """The body length a request's first ``LENGTH_DIGITS`` bytes announce."""
    if len(header) != LENGTH_DIGITS or not all(c in b"0123456789abcdef" for c in header):
        raise MalformedRequestError("the request does not start with 8 lowercase hex digits")
    length = int(header, 16)
    if length > MAX_REQUEST_BYTES:
        raise MalformedRequestError(f"request of {length} bytes exceeds {MAX_REQUEST_BYTES}")
    return length


def decode_request(body: bytes) -> FilterRequest:
    """The request in ``body``; :class:`MalformedRequestError` for anything else."""
    fields = body.split(b"\0")
    if len(fields) < 4:
        raise MalformedRequestError("a request has at least 4 fields")
    version, identity, cwd, umask, *assignments = fields
    if version != PROTOCOL_VERSION.encode():
        raise MalformedRequestError(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    if not cwd.startswith(b"/"):
        raise MalformedRequestError("the working directory is not absolute")
    if not umask or len(umask) > 4 or not all(c in b"01234567" for c in umask):
        raise MalformedRequestError(f"umask {umask!r} is not up to 4 octal digits")
    environ = {}
    for assignment in assignments:
        key, equals, value = assignment.partition(b"=")
        if not equals or not key:
            raise MalformedRequestError(f"environment entry {assignment[:40]!r} has no name")
        environ[key] = value
    return FilterRequest(identity.decode("utf-8", "surrogateescape"), cwd, int(umask, 8), environ)


def installation_identity() -> str:
    """Everything that must match for a server's child to behave as this process would.

    The child runs the server's interpreter and modules with the server's
    resource limits and credentials, so a client is only served by a server
    whose identity equals its own: the same interpreter and package, the same
    ``PYTHON*`` settings, limits (a test of a full disk sets RLIMIT_FSIZE),
    groups, priority, the encodings the locale chose, control group and mount
    namespace. Environment, working
    directory and umask travel in the request instead.
    """
    import resource  # a builtin module: no file to find before ``site`` has run

    python_settings = sorted(
        f"{key}={value}" for key, value in os.environ.items() if key.startswith("PYTHON")
    )
    limits = [
        f"{name}={resource.getrlimit(getattr(resource, name))}"
        for name in sorted(dir(resource))
        if name.startswith("RLIMIT_")
    ]
    parts = [
        sys.executable,
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        sys.version,
        *python_settings,
        *limits,
        f"uid={os.getuid()} gid={os.getgid()} groups={sorted(os.getgroups())}",
        f"priority={os.getpriority(os.PRIO_PROCESS, 0)}",
        # Fixed at start-up from the locale: file names and messages are encoded with them.
        f"encodings={sys.getfilesystemencoding()} {_stream_encoding(sys.stderr)}",
        _read_or_empty("/proc/self/cgroup"),
        _readlink_or_empty("/proc/self/ns/mnt"),
    ]
    return "\n".join(parts)


def _stream_encoding(stream) -> str:
    return f"{getattr(stream, 'encoding', None)}/{getattr(stream, 'errors', None)}"


def _read_or_empty(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:
        return ""


def _readlink_or_empty(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def runtime_directory() -> str:
    """The preferred directory of this user's server sockets: ``$XDG_RUNTIME_DIR/git-theta``,
    or ``git-theta-<uid>`` in ``$TMPDIR`` (``/tmp`` when unset)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "git-theta")
    temporary = os.environ.get("TMPDIR")
    if not temporary or not os.path.isabs(temporary):
        temporary = "/tmp"
    return os.path.join(temporary, f"git-theta-{os.getuid()}")


def rendezvous(identity: str) -> tuple[str, str] | None:
    """The directory and socket of the server for ``identity``: in :func:`runtime_directory`,
    or in ``/tmp/git-theta-<uid>`` when that path is too long for a socket; None when
    neither fits."""
    data = identity.encode("utf-8", "surrogateescape")
    name = f"filter-{zlib.crc32(data):08x}{zlib.adler32(data):08x}.sock"
    for directory in (runtime_directory(), f"/tmp/git-theta-{os.getuid()}"):
        path = os.path.join(directory, name)
        if fits_a_socket(path):
            return directory, path
    return None


def fits_a_socket(path: str) -> bool:
    """Whether ``path`` is short enough to be a Unix socket's address."""
    return len(os.fsencode(path)) <= MAX_SOCKET_PATH_BYTES


def trusted_directory(directory: str) -> bool:
    """Whether ``directory`` is a real directory (not a symbolic link) that this user owns
    and nobody else may enter: only then is a socket in it ours, and only ours."""
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and stat.S_IMODE(info.st_mode) & 0o077 == 0
    )


def peer_uid(connection) -> int:
    """The user id of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    import _socket
    import struct

    credentials = connection.getsockopt(
        _socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i")
    )
    return struct.unpack("3i", credentials)[1]


def same_user(connection) -> bool:
    return peer_uid(connection) == os.getuid()


def encode_message(payload: bytes) -> bytes:
    """A prompt or an answer on the prompt socket: 8 hex digits of length, then the bytes."""
    return b"%08x" % len(payload) + payload


def receive_message(connection, limit: int) -> bytes:
    """One :func:`encode_message` message of at most ``limit`` bytes from ``connection``."""
    length = body_length(receive_exactly(connection, LENGTH_DIGITS))
    if length > limit:
        raise MalformedRequestError(f"a message of {length} bytes exceeds {limit}")
    return receive_exactly(connection, length)


def receive_exactly(connection, size: int) -> bytes:
    chunks = []
    while size:
        chunk = connection.recv(min(size, 1 << 16))
        if not chunk:
            raise MalformedRequestError("the message ended early")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
