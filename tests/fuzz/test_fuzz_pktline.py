"""Fuzz the pkt-line reader and the filter protocol's state machine with arbitrary streams.

Whatever git (or anything pretending to be git) sends, the only outcomes are
packets read, a clean end of stream, or a PktLineError/ProtocolError: never
another exception, and never a read past what the stream holds.
"""

from __future__ import annotations

import io

from fuzz_settings import fuzz
from hypothesis import given
from hypothesis import strategies as st

from git_theta_filter.filter_protocol import ProtocolError, serve
from git_theta_filter.pktline import (
    FLUSH,
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

    def prepare_smudge(self, pathname: str, content: PktLineReader):
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
