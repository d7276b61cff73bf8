"""formats/source.py: the forward-only input of clean, read in small chunks and short reads."""

from __future__ import annotations

import hashlib
import io

import pytest
from helpers import within

from git_theta_filter.errors import ThetaError
from git_theta_filter.formats.source import Source, TruncatedError

DATA = bytes(range(256)) * 3


class Trickle(io.RawIOBase):
    """A pipe that hands over at most ``step`` bytes a read, as git's may."""

    def __init__(self, data: bytes, step: int = 3) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        count = min(len(buffer), self._step, len(self._data))
        buffer[:count] = self._data[:count]
        self._data = self._data[count:]
        return count


def test_reads_across_chunks_hash_every_byte_once() -> None:
    source = Source(Trickle(DATA), chunk=16)
    assert source.peek(10) == DATA[:10]
    assert source.position == 0, "peek consumes nothing"
    assert source.read_exact(100, "header") == DATA[:100]
    parts: list[bytes] = []
    assert source.copy_to(lambda view: parts.append(bytes(view)), 300) == 300
    assert b"".join(parts) == DATA[100:400]
    assert max(map(len, parts)) <= 16, "handed over in chunk-sized views"
    rest: list[bytes] = []
    assert source.copy_rest(lambda view: rest.append(bytes(view))) == len(DATA) - 400
    assert b"".join(rest) == DATA[400:]
    assert source.finish() == (len(DATA), hashlib.sha256(DATA).hexdigest())


def test_a_short_file_is_a_truncated_error_naming_the_offset() -> None:
    source = Source(io.BytesIO(b"abcdef"), chunk=4)
    source.read(2)
    with pytest.raises(TruncatedError, match="file ends inside the header at offset 6"):
        source.read_exact(10, "the header")
    # Bounded in time: without its check, copy_to would wait for bytes that never come.
    with pytest.raises(TruncatedError, match="5 bytes early"):
        within(10, lambda: Source(io.BytesIO(b"abc"), chunk=4).copy_to(lambda view: None, 8))


def test_read_is_short_only_at_the_end() -> None:
    source = Source(Trickle(b"abcdefgh", step=1), chunk=4)
    assert source.read(6) == b"abcdef"
    assert source.read(6) == b"gh"
    assert source.read(6) == b""
    assert source.at_eof()


def test_finish_before_the_end_and_a_peek_past_the_buffer_are_refused() -> None:
    source = Source(io.BytesIO(DATA), chunk=16)
    # Bounded in time: without its check, peek would refill a full buffer for ever.
    with pytest.raises(ValueError, match="peek larger than the buffer"):
        within(10, lambda: source.peek(17))
    with pytest.raises(ThetaError, match="before the end of input"):
        source.finish()


def test_a_buffer_is_not_refilled_while_work_handed_its_bytes_still_runs() -> None:
    """A ``write`` may return a future of work that reads the view later (an object's
    hash): the reader runs on into the other buffers of the ring, and waits for that
    work before it reads new bytes into the buffer."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    data = bytes(range(256)) * 16
    seen: list[bytes] = []

    def check(view: memoryview, expected: bytes) -> None:
        time.sleep(0.001)  # slower than the reader: it catches up and must wait
        seen.append(bytes(view) if bytes(view) == expected else b"overwritten")

    with ThreadPoolExecutor(1) as later:
        source = Source(Trickle(data, step=16), chunk=64, ring=3)
        assert source.copy_to(lambda view: later.submit(check, view, bytes(view)), len(data))
        assert source.finish() == (len(data), hashlib.sha256(data).hexdigest())
    assert b"".join(seen) == data
    assert len(source._buffers) == 3, "no buffer beyond the ring"


def test_take_gives_the_next_bytes_as_a_view_or_nothing_consumed() -> None:
    source = Source(Trickle(DATA), chunk=16)
    assert bytes(source.take(10)) == DATA[:10] and source.position == 10
    # Across the end of what the buffer held: its rest is carried over, more is read.
    assert bytes(source.take(16)) == DATA[10:26] and source.position == 26
    assert source.take(17) is None and source.position == 26  # more than the buffer holds
    assert source.read(len(DATA) - 26 - 5) == DATA[26:-5]
    assert source.take(6) is None and source.position == len(DATA) - 5  # the input ends first
    assert bytes(source.take(5)) == DATA[-5:]
    assert source.finish() == (len(DATA), hashlib.sha256(DATA).hexdigest())
