"""pkt-line framing, as used by Git's long-running filter protocol.

Git's contract (gitprotocol-common, "pkt-line Format"):

* A packet is four lowercase hex digits giving the total length, *including*
  those four bytes, followed by the payload.
* ``0000`` is a flush packet; it carries no payload and ends a list or a
  content stream.
* The largest packet is 65520 bytes, so a payload holds at most 65516 bytes.
* Text packets end in ``\\n``; content is sent verbatim, split into packets.

This module only frames bytes. What the packets mean lives in
``filter_protocol``.
"""

from __future__ import annotations

import fcntl
import io
import os
import stat

from .errors import ThetaError

# Neither is imported at run time: the filter's client answers git's handshake with
# this module before ``site`` is loaded (filter_handshake.py), and typing alone costs
# it about 20 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

__all__ = [
    "MAX_PAYLOAD",
    "FLUSH",
    "PktLineError",
    "encode",
    "encode_text",
    "iter_content_packets",
    "PktLineReader",
    "PktLineWriter",
]

MAX_PAYLOAD = 65516
FLUSH = b"0000"
_HEADER_SIZE = 4
_LOWER_HEX = b"0123456789abcdef"


class PktLineError(ThetaError):
    """The peer broke the pkt-line framing."""


def encode(payload: bytes | memoryview) -> bytes:
    """Frame one payload as a packet. An empty payload is not allowed (it would read as flush)."""
    size = len(payload)
    if not 0 < size <= MAX_PAYLOAD:
        raise PktLineError(f"packet payload of {size} bytes is outside 1..{MAX_PAYLOAD}")
    return b"%04x" % (size + _HEADER_SIZE) + bytes(payload)


def encode_text(line: str) -> bytes:
    """Frame one text line; the trailing newline is added here."""
    return encode(line.encode("utf-8") + b"\n")


def iter_content_packets(data: bytes) -> Iterator[bytes]:
    """Frame ``data`` as content packets, without the closing flush."""
    view = memoryview(data)
    for start in range(0, len(view), MAX_PAYLOAD):
        yield encode(view[start : start + MAX_PAYLOAD])


def _parse_length(header: bytes) -> int:
    # int(x, 16) alone would also take "0x0a", " 00a", "+00a" and "0_0a".
    if len(header) != _HEADER_SIZE or header.strip(_LOWER_HEX):
        raise PktLineError(f"bad pkt-line header {header!r}")
    length = int(header, 16)
    if length == 0:
        return 0
    if length <= _HEADER_SIZE or length > MAX_PAYLOAD + _HEADER_SIZE:
        # 0001..0004 are special packets that the filter protocol never sends.
        raise PktLineError(f"bad pkt-line length {length}")
    return length - _HEADER_SIZE


class PktLineReader:
    """Reads packets from a binary stream.

    Content is read with :meth:`readinto` straight into the caller's buffer, so
    a large file is never assembled as one ``bytes`` object.
    """

    def __init__(self, stream: io.RawIOBase | io.BufferedIOBase) -> None:
        self._stream = stream
        # Payload bytes of the current content packet not yet handed out.
        self._remaining_in_packet = 0
        self._content_done = True

    def _read_exact(self, size: int, what: str) -> bytes:
        """Exactly ``size`` bytes; a raw pipe may hand them out in pieces."""
        data = self._stream.read(size) or b""
        while len(data) < size:
            more = self._stream.read(size - len(data))
            if not more:
                raise PktLineError(f"unexpected end of stream inside {what}")
            data += more
        return data

    def read_packet(self) -> bytes | None:
        """One packet's payload, ``None`` for a flush. EOFError at a clean end of stream."""
        first = self._stream.read(_HEADER_SIZE)
        if not first:
            raise EOFError
        header = first + self._read_exact(_HEADER_SIZE - len(first), "a packet header")
        size = _parse_length(header)
        if size == 0:
            return None
        return self._read_exact(size, "a packet")

    def read_text(self) -> str | None:
        """One text packet without its newline, ``None`` for a flush.

        Undecodable bytes become surrogates: a path on Linux is any bytes, and
        ``os.fsencode`` turns such a ``pathname=`` back into the same bytes.
        """
        packet = self.read_packet()
        if packet is None:
            return None
        return packet.decode("utf-8", "surrogateescape").removesuffix("\n")

    def read_text_list(self) -> list[str]:
        """Text packets up to the next flush."""
        lines = []
        while (line := self.read_text()) is not None:
            lines.append(line)
        return lines

    def start_content(self) -> None:
        """Begin reading a content stream that ends at the next flush."""
        self._remaining_in_packet = 0
        self._content_done = False

    def readinto(self, buffer: memoryview | bytearray) -> int:
        """Fill ``buffer`` with content bytes; 0 means the closing flush was read."""
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and not self._content_done:
            if self._remaining_in_packet == 0:
                size = _parse_length(self._read_exact(_HEADER_SIZE, "content"))
                if size == 0:
                    self._content_done = True
                    break
                self._remaining_in_packet = size
            want = min(self._remaining_in_packet, len(view) - filled)
            got = self._stream.readinto(view[filled : filled + want])
            if not got:
                raise PktLineError("unexpected end of stream inside content")
            filled += got
            self._remaining_in_packet -= got
        return filled

    def drain_content(self) -> None:
        """Skip the rest of the current content stream (after an error)."""
        scratch = bytearray(1 << 16)
        while self.readinto(scratch):
            pass


# Content of at least this many bytes goes to a buffered stream's file directly, its
# packets and their headers in one writev() per _MAX_VECTORS buffers: a checkout of
# 100 MB copied each byte once more into the stream's buffer.
_DIRECT_FROM = MAX_PAYLOAD
_MAX_VECTORS = 512


class PktLineWriter:
    """Writes packets to a binary stream."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._fd = _direct_fd(stream)

    def write_text(self, line: str) -> None:
        self._stream.write(encode_text(line))

    def write_text_list(self, lines: list[str]) -> None:
        for line in lines:
            self.write_text(line)
        self.flush_packet()

    def flush_packet(self) -> None:
        """Send a flush packet and push everything out to the peer."""
        self._stream.write(FLUSH)
        self._stream.flush()

    def write_content(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as content packets (no flush). Slices are written without copying."""
        view = memoryview(data).cast("B")
        if self._fd is not None and len(view) >= _DIRECT_FROM:
            self._stream.flush()  # what was written before goes first
            buffers: list[bytes | memoryview] = []
            for start in range(0, len(view), MAX_PAYLOAD):
                chunk = view[start : start + MAX_PAYLOAD]
                buffers += (b"%04x" % (len(chunk) + _HEADER_SIZE), chunk)
                if len(buffers) >= _MAX_VECTORS:
                    _write_vectors(self._fd, buffers)
                    buffers = []
            _write_vectors(self._fd, buffers)
            return
        write = self._stream.write
        for start in range(0, len(view), MAX_PAYLOAD):
            chunk = view[start : start + MAX_PAYLOAD]
            write(b"%04x" % (len(chunk) + _HEADER_SIZE))
            write(chunk)


def _direct_fd(stream: BinaryIO) -> int | None:
    """The file under a buffered stream, which content may be written to directly once
    the stream is flushed; None for any other stream."""
    if not isinstance(stream, io.BufferedWriter):
        return None
    try:
        return stream.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation: in memory
        return None


def _write_vectors(fd: int, buffers: list[bytes | memoryview]) -> None:
    """Write every byte of ``buffers``, in order: writev() may write fewer (a signal)."""
    first = 0
    while first < len(buffers):
        written = os.writev(fd, buffers[first:] if first else buffers)
        while first < len(buffers) and written >= len(buffers[first]):
            written -= len(buffers[first])
            first += 1
        if written:
            buffers[first] = memoryview(buffers[first])[written:]


def open_stdio_streams(buffer_size: int = 1 << 20) -> tuple[io.FileIO, BinaryIO]:
    """Binary stdin/stdout for the filter, which moves gigabytes through them.

    stdin is unbuffered: content payloads are read straight into the caller's
    buffer, where a buffered reader would copy every byte twice. Both pipes
    are enlarged so that the writing side can run a megabyte ahead of the
    reading side instead of blocking at every 64 KB packet.
    """
    for fd in (0, 1):
        _enlarge_pipe(fd, buffer_size)
    stdin = open(0, "rb", buffering=0, closefd=False)
    stdout = open(1, "wb", buffering=buffer_size, closefd=False)
    return stdin, stdout


def _enlarge_pipe(fd: int, size: int) -> None:
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    try:
        if set_size is not None and stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, set_size, size)
    except OSError:
        # Over /proc/sys/fs/pipe-max-size for an unprivileged user: the
        # default size only costs speed.
        pass
