"""A forward-only byte source for the clean path, with peek and whole-file hashing.

Format parsers pull bytes from here; nothing ever seeks back. Every byte is
hashed exactly once, as it arrives, so the manifest's whole-file sha256 costs
no second pass. Memory is two fixed chunk buffers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from ..errors import ThetaError
from ..threads import LazyThreadPool

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = ["Source", "TruncatedError", "Readable", "CHUNK"]

CHUNK = 1 << 20
# Buffers the reader may run ahead of the hashes and encodings of the bytes it read.
RING = 8

# The whole-file sha256 runs on this thread while the caller's thread parses
# and stores objects (which costs a second sha256 of the same bytes). hashlib
# releases the GIL on large buffers, so the two hashes use two cores. One
# worker runs the updates in the order they were queued.
_file_hasher = LazyThreadPool(1, "theta-file-hash")


class Readable(Protocol):
    def readinto(self, buffer: memoryview | bytearray) -> int: ...


class TruncatedError(ThetaError):
    """The content ended before the structure said it would."""


class Source:
    """Reads ``raw`` into a ring of up to ``ring`` buffers of ``chunk`` bytes.

    Every byte is handed out as a view of the buffer it was read into, and
    the buffer is not refilled until all work queued on its bytes is done:
    the whole-file hash, and any future that a ``write`` given to
    :meth:`copy_to` returned (an object's hash, its encoding). So the reader
    runs up to ``ring`` buffers ahead of the workers instead of waiting for
    each chunk's hashes, and no byte is copied out to be worked on. Buffers
    are made as the reader first needs them: a small file takes one.
    """

    def __init__(self, raw: Readable, chunk: int = CHUNK, ring: int = RING) -> None:
        self._raw = raw
        self._chunk = chunk
        self._ring = max(2, ring)
        self._buffers = [bytearray(chunk)]
        # Work queued on each buffer's bytes, waited for before the buffer is refilled.
        self._pending: list[list[Future]] = [[]]
        self._current = 0
        self._view = memoryview(self._buffers[0])
        self._start = 0  # first unconsumed byte in the current buffer
        self._end = 0  # end of valid bytes in the current buffer
        self._eof = False
        self._hash = hashlib.sha256()
        self.position = 0  # bytes consumed so far = offset in the file

    def _settle(self, index: int) -> None:
        """Wait until no queued work reads buffer ``index``."""
        pending, self._pending[index] = self._pending[index], []
        for future in pending:
            # Errors are the submitter's to raise (an object's commit, the hash at
            # finish()); here only the buffer's release matters.
            if not future.cancelled():
                future.exception()

    def _next_buffer(self) -> int:
        index = (self._current + 1) % self._ring
        if index == len(self._buffers):
            self._buffers.append(bytearray(self._chunk))
            self._pending.append([])
        else:
            self._settle(index)
        return index

    def _fill(self) -> bool:
        """Read more bytes behind the unconsumed ones; False at end of input."""
        if self._eof:
            return False
        if self._start:
            # Carry the unconsumed bytes over to the front of the next buffer.
            following = self._next_buffer()
            target = memoryview(self._buffers[following])
            remaining = self._end - self._start
            target[:remaining] = self._view[self._start : self._end]
            self._current, self._view = following, target
            self._start, self._end = 0, remaining
        if self._end == len(self._view):
            return True
        count = self._raw.readinto(self._view[self._end :])
        if not count:
            self._eof = True
            return False
        arrived = self._view[self._end : self._end + count]
        self._pending[self._current].append(_file_hasher.submit(self._hash.update, arrived))
        self._end += count
        return True

    def peek(self, size: int) -> bytes:
        """Up to ``size`` upcoming bytes (fewer only at end of input), not consumed."""
        if size > len(self._view):
            raise ValueError("peek larger than the buffer")
        while self._end - self._start < size and self._fill():
            pass
        return bytes(self._view[self._start : min(self._end, self._start + size)])

    def take(self, size: int) -> memoryview | None:
        """The next ``size`` bytes, consumed, as a view of the buffer that is good until
        the next call; None, with nothing consumed, if they are more than the buffer
        holds or the input ends first."""
        if size > len(self._view):
            return None
        while self._end - self._start < size and self._fill():
            pass
        if self._end - self._start < size:
            return None
        view = self._view[self._start : self._start + size]
        self._start += size
        self.position += size
        return view

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at end of input."""
        if self._end - self._start >= size:  # in the buffer: a zip header, most often
            data = bytes(self._view[self._start : self._start + size])
            self._start += size
            self.position += size
            return data
        parts = bytearray()
        self.copy_to(parts.extend, size, allow_short=True)
        return bytes(parts)

    def read_exact(self, size: int, what: str = "data") -> bytes:
        data = self.read(size)
        if len(data) != size:
            raise TruncatedError(f"file ends inside {what} at offset {self.position}")
        return data

    def copy_to(
        self, write: Callable[[memoryview], object], size: int, *, allow_short: bool = False
    ) -> int:
        """Hand the next ``size`` bytes to ``write`` in chunk-sized views.

        ``write`` may return a future of work that still reads the view: its buffer
        is not refilled until that is done.
        """
        left = size
        while left:
            if self._start == self._end and not self._fill():
                if allow_short:
                    break
                raise TruncatedError(f"file ends {left} bytes early at offset {self.position}")
            take = min(left, self._end - self._start)
            queued = write(self._view[self._start : self._start + take])
            if queued is not None and hasattr(queued, "exception"):
                # Anything with ``exception`` is taken for the future it is.
                self._pending[self._current].append(cast("Future", queued))
            self._start += take
            self.position += take
            left -= take
        return size - left

    def copy_rest(self, write: Callable[[memoryview], object]) -> int:
        """Hand every remaining byte to ``write``; returns how many."""
        total = 0
        while self._start < self._end or self._fill():
            take = self._end - self._start
            queued = write(self._view[self._start : self._end])
            if queued is not None and hasattr(queued, "exception"):
                # Anything with ``exception`` is taken for the future it is.
                self._pending[self._current].append(cast("Future", queued))
            self._start = self._end
            self.position += take
            total += take
        return total

    def at_eof(self) -> bool:
        return self._start == self._end and not self._fill()

    def finish(self) -> tuple[int, str]:
        """Consume nothing more; return (total size, sha256) once input is exhausted."""
        if not self.at_eof():
            raise ThetaError("finish() called before the end of input")
        for index in range(len(self._buffers)):
            self._settle(index)
        return self.position, self._hash.hexdigest()
