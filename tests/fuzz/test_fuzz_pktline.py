"""Fuzz the pkt-line reader and the filter protocol's state machine with arbitrary streams.

Whatever git (or anything pretending to be git) sends, the only outcomes are
packets read, a clean end of stream, or a PktLineError/ProtocolError: never
another exception, and never a read past what the stream holds. And what the
writer encodes, the reader decodes to the same packets, however the pipe
splits the bytes.
"""

from __future__ import annotations

import io

from fuzz_settings import fuzz
from hypothesis import given
from hypothesis import strategies as st

from git_theta_filter.filter_protocol import ProtocolError, serve
from git_theta_filter.pktline import (
    FLUSH,
    MAX_PAYLOAD,
    PktLineError,
    PktLineReader,
    PktLineWriter,
    encode,
    encode_text,
)

# Streams made of plausible pieces (valid packets, flushes, bad headers, cut packets) and raw bytes.
pieces = st.one_of(
    st.binary(min_size=1, max_size=40).map(encode),
    st.just(FLUSH),
    st.sampled_from(
        [b"0001", b"0004", b"fff0", b"ffff", b"000A", b"00x5", b"0x0a", b" 00a", b"0005"]
    ),
    st.binary(max_size=8),
    st.sampled_from(
        [
            "command=clean",
            "command=smudge",
            "pathname=a.pth",
            "pathname=\udcff.pth",
            "capability=clean",
        ]
    ).map(lambda line: encode(line.encode("utf-8", "surrogateescape") + b"\n")),
)
streams = st.lists(pieces, max_size=30).map(b"".join)


@fuzz(400)
@given(streams, st.integers(1, 100))
def test_reader_yields_packets_or_a_pkt_line_error(stream: bytes, chunk: int) -> None:
    reader = PktLineReader(io.BytesIO(stream))
    try:
        while True:
            reader.read_text_list()
            reader.start_content()
            buffer = bytearray(chunk)
            while reader.readinto(buffer):
                pass
    except (EOFError, PktLineError):
        pass


class Trickle(io.RawIOBase):
    """A pipe that hands out at most ``step`` bytes on every other read, as a real pipe may."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step
        self._short = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        self._short = not self._short
        count = min(len(buffer), len(self._data) - self._pos)
        if self._short:
            count = min(count, self._step)
        buffer[:count] = self._data[self._pos : self._pos + count]
        self._pos += count
        return count


# A message is a list of text lines (ended by a flush) or a content stream (ended by a flush).
texts = st.lists(
    st.text(st.characters(blacklist_characters="\n", blacklist_categories=["Cs"]), max_size=30),
    max_size=5,
)
contents = st.one_of(
    st.binary(max_size=200),
    # Across packet boundaries: one byte short of, exactly, and just over whole packets.
    st.sampled_from([MAX_PAYLOAD - 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 2 * MAX_PAYLOAD + 3]).map(
        lambda n: bytes(range(256)) * (n // 256) + bytes(n % 256)
    ),
)
messages = st.lists(st.one_of(texts, contents), max_size=6)


@fuzz(200)
@given(messages, st.integers(1, 9), st.sampled_from([1, 5, 4096, MAX_PAYLOAD, 70_000]))
def test_what_the_writer_encodes_the_reader_decodes_to_the_same_packets(
    sent: list, step: int, chunk: int
) -> None:
    out = io.BytesIO()
    writer = PktLineWriter(out)
    for message in sent:
        if isinstance(message, list):
            writer.write_text_list(message)
        else:
            writer.write_content(message)
            writer.flush_packet()
    reader = PktLineReader(Trickle(out.getvalue(), step))
    # Small buffers over whole packets cost seconds; small messages cover the same paths.
    buffer = bytearray(max(chunk, 4096) if any(len(m) > 1000 for m in sent) else chunk)
    for message in sent:
        if isinstance(message, list):
            assert reader.read_text_list() == message
        else:
            reader.start_content()
            got = bytearray()
            while count := reader.readinto(buffer):
                got += buffer[:count]
            assert got == message
    try:
        reader.read_packet()
    except EOFError:
        pass
    else:
        raise AssertionError("the reader found a packet that was never written")


@fuzz(300)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.binary(min_size=1, max_size=100),
            st.sampled_from([MAX_PAYLOAD - 1, MAX_PAYLOAD]).map(lambda n: b"\xff" * n),
            # Packets a reader could trim or take for something else: line ends, NULs,
            # a payload that looks like a flush or a header.
            st.sampled_from([b"\n", b"line\n", b"\r\n", b"\x00", b"a\x00", b"0000", b"0004"]),
        ),
        max_size=8,
    )
)
def test_encoded_packets_and_flushes_read_back_one_for_one(packets: list[bytes | None]) -> None:
    stream = b"".join(FLUSH if packet is None else encode(packet) for packet in packets)
    reader = PktLineReader(io.BytesIO(stream))
    assert [reader.read_packet() for _ in packets] == packets
    assert reader._stream.read(1) == b""  # type: ignore[attr-defined]


class EchoHandler:
    """Reads each request's content through the reader, as the real handler does."""

    def _read(self, content: PktLineReader) -> bytes:
        out = bytearray()
        buffer = bytearray(7)
        while count := content.readinto(buffer):
            out += buffer[:count]
        return bytes(out)

    def clean(self, pathname: str, content: PktLineReader) -> bytes:
        return self._read(content)

    def prepare_smudge(self, pathname: str, content: PktLineReader, treeish: str | None = None):
        data = self._read(content)
        if pathname.startswith("fail"):
            raise ValueError("refused")

        class Output:
            def write(self, write) -> None:
                write(memoryview(data))

        return Output()


HANDSHAKE = encode_text("git-filter-client") + encode_text("version=2") + FLUSH
CAPABILITIES = encode_text("capability=clean") + encode_text("capability=smudge") + FLUSH


@fuzz(400)
@given(st.booleans(), streams)
def test_serve_answers_or_stops_with_a_protocol_error(handshake_first: bool, stream: bytes) -> None:
    data = (HANDSHAKE + CAPABILITIES if handshake_first else b"") + stream
    out = io.BytesIO()
    try:
        serve(
            PktLineReader(io.BytesIO(data)),
            PktLineWriter(out),
            EchoHandler(),
            lambda exc, path: None,
        )
    except (PktLineError, ProtocolError):
        pass
    # Whatever we wrote is well-formed pkt-line.
    reader = PktLineReader(io.BytesIO(out.getvalue()))
    try:
        while True:
            reader.read_packet()
    except EOFError:
        pass
