"""pkt-line framing: encode/decode, content streams, and rejection of broken framing."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from git_theta_filter.pktline import (
    FLUSH,
    MAX_PAYLOAD,
    PktLineError,
    PktLineReader,
    PktLineWriter,
    encode,
    encode_text,
    iter_content_packets,
)


class _EndsLoudly(io.BytesIO):
    """A stream that fails a test reading past its end again and again: a reader that
    missed the end of the stream would otherwise spin there forever."""

    _READS_PAST_END = 16

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._past_end = 0

    def _count(self, wanted: int, got: int) -> None:
        if wanted and not got:
            self._past_end += 1
            assert self._past_end <= self._READS_PAST_END, "read on and on past the end"

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self._count(size != 0, len(data))
        return data

    def readinto(self, buffer) -> int:
        got = super().readinto(buffer)
        self._count(len(memoryview(buffer)), got)
        return got


def reader_for(data: bytes) -> PktLineReader:
    return PktLineReader(_EndsLoudly(data))


def read_content(reader: PktLineReader, chunk: int = 1000) -> bytes:
    reader.start_content()
    out = bytearray()
    buffer = bytearray(chunk)
    while count := reader.readinto(buffer):
        out += buffer[:count]
    return bytes(out)


def decode_all(stream: bytes) -> list[bytes | None]:
    """Every packet of a stream, in order: payloads, and None for each flush."""
    reader = reader_for(stream)
    packets: list[bytes | None] = []
    while True:
        try:
            packets.append(reader.read_packet())
        except EOFError:
            return packets


# -- encoding -------------------------------------------------------------------


def test_encode_counts_the_four_header_bytes() -> None:
    assert encode(b"a") == b"0005a"
    assert encode_text("version=2") == b"000eversion=2\n"
    assert FLUSH == b"0000"


def test_encode_largest_payload_uses_lowercase_hex() -> None:
    packet = encode(b"x" * MAX_PAYLOAD)
    assert MAX_PAYLOAD == 65516
    assert packet[:4] == b"fff0"
    assert len(packet) == 65520


@pytest.mark.parametrize("size", [0, MAX_PAYLOAD + 1])
def test_encode_refuses_empty_and_oversized_payloads(size: int) -> None:
    with pytest.raises(PktLineError, match=f"packet payload of {size} bytes is outside 1..65516"):
        encode(b"x" * size)


def test_iter_content_packets_splits_at_max_payload() -> None:
    data = bytes(range(256)) * 600  # 153600 bytes: two full packets and a rest
    packets = list(iter_content_packets(data))
    assert [len(p) - 4 for p in packets] == [MAX_PAYLOAD, MAX_PAYLOAD, len(data) - 2 * MAX_PAYLOAD]
    assert b"".join(p[4:] for p in packets) == data
    assert list(iter_content_packets(b"")) == []


# -- round trips ----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=3000),
        st.integers(0, 3 * MAX_PAYLOAD + 7).map(lambda n: bytes(i % 251 for i in range(n))),
    ),
    chunk=st.integers(1, 70000),
)
def test_content_round_trip(data: bytes, chunk: int) -> None:
    out = io.BytesIO()
    writer = PktLineWriter(out)
    writer.write_content(data)
    writer.flush_packet()
    stream = out.getvalue()

    packets = decode_all(stream)
    assert packets[-1] is None and None not in packets[:-1]
    assert all(0 < len(p) <= MAX_PAYLOAD for p in packets[:-1])
    assert len(packets) - 1 == -(-len(data) // MAX_PAYLOAD)
    assert b"".join(packets[:-1]) == data
    # Same stream through the streaming reader, with any buffer size.
    assert read_content(reader_for(stream), chunk) == data


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=200), max_size=20), st.integers(1, 300))
def test_content_in_arbitrary_packets_reads_back_whole(parts: list[bytes], chunk: int) -> None:
    """Git may split content at any packet boundary; the reader must not care."""
    stream = b"".join(encode(p) for p in parts) + FLUSH + encode_text("status=success")
    reader = reader_for(stream)
    assert read_content(reader, chunk) == b"".join(parts)
    # The reader stopped exactly at the flush: the next packet is intact.
    assert reader.read_text() == "status=success"


@given(
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=40
        ).filter(lambda s: "\n" not in s),
        max_size=8,
    )
)
def test_text_list_round_trip(lines: list[str]) -> None:
    out = io.BytesIO()
    PktLineWriter(out).write_text_list(lines)
    assert out.getvalue().endswith(FLUSH)
    reader = reader_for(out.getvalue())
    assert reader.read_text_list() == lines
    with pytest.raises(EOFError):
        reader.read_packet()


def test_read_text_strips_only_the_newline() -> None:
    reader = reader_for(encode(b"a b \n") + encode(b"no-newline") + FLUSH)
    assert reader.read_text() == "a b "
    assert reader.read_text() == "no-newline"
    assert reader.read_text() is None


def test_drain_content_skips_to_the_flush() -> None:
    stream = b"".join(iter_content_packets(b"z" * 100_000)) + FLUSH + encode_text("next")
    reader = reader_for(stream)
    reader.start_content()
    first = bytearray(10)
    assert reader.readinto(first) == 10
    reader.drain_content()
    assert reader.read_text() == "next"


def test_writer_flush_pushes_buffered_output() -> None:
    raw = io.BytesIO()
    buffered = io.BufferedWriter(raw, buffer_size=1 << 16)
    writer = PktLineWriter(buffered)
    writer.write_text("status=success")
    assert raw.getvalue() == b""
    writer.flush_packet()
    assert raw.getvalue() == b"0013status=success\n0000"


# -- broken framing ---------------------------------------------------------------


def test_clean_end_of_stream_is_eof_not_an_error() -> None:
    with pytest.raises(EOFError):
        reader_for(b"").read_packet()


@pytest.mark.parametrize(
    "stream, message",
    [
        (b"00", "unexpected end of stream inside a packet header"),
        (b"0009abc", "unexpected end of stream inside a packet"),
        (b"zzzz", "bad pkt-line header b'zzzz'"),
        (b"000Aabcdef", "bad pkt-line header b'000A'"),  # git writes lowercase hex
        (b"0001", "bad pkt-line length 1"),  # delim: not part of the filter protocol
        (b"0004", "bad pkt-line length 4"),  # an empty data packet
        (b"fff1" + b"x" * 65517, "bad pkt-line length 65521"),
        (b"ffff", "bad pkt-line length 65535"),
    ],
)
def test_bad_headers_are_rejected(stream: bytes, message: str) -> None:
    with pytest.raises(PktLineError) as info:
        reader_for(stream).read_packet()
    assert str(info.value) == message


@pytest.mark.parametrize(
    "stream, message",
    [
        (encode(b"abc")[:-1], "unexpected end of stream inside content"),  # payload cut short
        (encode(b"abc"), "unexpected end of stream inside content"),  # no closing flush
        (encode(b"abc") + b"00", "unexpected end of stream inside content"),
        (encode(b"abc") + b"xyz!", "bad pkt-line header b'xyz!'"),
    ],
)
def test_broken_content_streams_are_rejected(stream: bytes, message: str) -> None:
    reader = reader_for(stream)
    with pytest.raises(PktLineError) as info:
        read_content(reader)
    assert str(info.value) == message


# int(header, 16) alone would accept all of these.
@pytest.mark.parametrize("header", [b" 00a", b"+00a", b"0_0a", b"00a\n", b"00a ", b"0x0a"])
def test_headers_that_int_accepts_but_are_not_hex_digits_are_rejected(header: bytes) -> None:
    with pytest.raises(PktLineError):
        reader_for(header + b"abcdef").read_packet()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789abcdefABCDEFgxz", min_size=4, max_size=4))
def test_a_header_is_its_lowercase_hex_length_or_a_pktline_error(header: str) -> None:
    stream = header.encode() + b"p" * 70000
    valid_hex = all(c in "0123456789abcdef" for c in header)
    length = int(header, 16) if valid_hex else None
    if length is not None and (length == 0 or 5 <= length <= MAX_PAYLOAD + 4):
        packet = reader_for(stream).read_packet()
        assert packet is None if length == 0 else packet == b"p" * (length - 4)
    else:
        with pytest.raises(PktLineError):
            reader_for(stream).read_packet()


def _written_through_a_file(tmp_path: Path, content: bytes) -> bytes:
    path = tmp_path / "out"
    with open(path, "wb", buffering=1 << 20) as stream:
        writer = PktLineWriter(stream)
        writer.write_text("status=success")
        writer.write_content(content)
        writer.write_content(b"tail")
        writer.flush_packet()
    return path.read_bytes()


def _framed(content: bytes) -> bytes:
    """What :func:`_written_through_a_file` writes, framed packet by packet."""
    return (
        encode_text("status=success")
        + b"".join(iter_content_packets(content))
        + b"".join(iter_content_packets(b"tail"))
        + FLUSH
    )


@pytest.mark.parametrize("size", [MAX_PAYLOAD - 1, MAX_PAYLOAD, 3 * MAX_PAYLOAD + 5, 40 << 20])
def test_content_written_to_a_file_directly_is_framed_and_ordered_as_buffered(
    tmp_path: Path, size: int
) -> None:
    content = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert _written_through_a_file(tmp_path, content) == _framed(content)


def test_a_short_writev_is_continued_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """writev() may write less than asked (a signal arrived): the rest follows."""
    real_writev = os.writev

    def short_writev(fd: int, buffers: list) -> int:
        data = b"".join(bytes(buffer) for buffer in buffers)
        return real_writev(fd, [data[: max(1, len(data) // 3 - 7)]])

    monkeypatch.setattr(os, "writev", short_writev)
    content = os.urandom(5 * MAX_PAYLOAD + 11)
    assert _written_through_a_file(tmp_path, content) == _framed(content)
