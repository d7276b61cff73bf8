"""The handshake of git's long-running filter protocol (``filter_protocol.py`` serves the rest).

Git sends ``git-filter-client``, ``version=2``, flush; the filter answers
``git-filter-server``, ``version=2``, flush. Git sends its capabilities
(``capability=clean``, ``capability=smudge``, ...), flush; the filter answers
with the subset it supports, flush. Git sends no request before that answer.

This module imports nothing but builtin modules and :mod:`pktline`, so that the
filter's client (``filter_client.py``), serving git in its own process, answers
git before it loads ``site``, numpy and the store: the handshake waits on
nothing the filter has to load.
"""

from __future__ import annotations

from .errors import ThetaError
from .pktline import PktLineReader, PktLineWriter, open_stdio_streams

TYPE_CHECKING = False  # typing is not imported: see pktline.py
if TYPE_CHECKING:
    from typing import BinaryIO

__all__ = ["CAPABILITIES", "ProtocolError", "AnsweredGit", "answer_handshake", "answer_git"]

CAPABILITIES = ("clean", "smudge")


class ProtocolError(ThetaError):
    """Git sent something the protocol does not allow."""


def _read_handshake_list(reader: PktLineReader) -> list[str]:
    # Between requests, end of input is git closing the pipe when done; here it
    # means git went away before saying what it wants.
    try:
        return reader.read_text_list()
    except EOFError:
        raise ProtocolError("the input ended during the handshake") from None


def answer_handshake(reader: PktLineReader, writer: PktLineWriter) -> set[str]:
    """Answer git's handshake; the commands both sides support."""
    welcome = _read_handshake_list(reader)
    if not welcome or welcome[0] != "git-filter-client" or "version=2" not in welcome[1:]:
        raise ProtocolError(f"unexpected handshake {welcome!r}")
    writer.write_text_list(["git-filter-server", "version=2"])
    offered = {
        line.removeprefix("capability=")
        for line in _read_handshake_list(reader)
        if line.startswith("capability=")
    }
    supported = [c for c in CAPABILITIES if c in offered]
    writer.write_text_list([f"capability={c}" for c in supported])
    return set(supported)


class AnsweredGit:
    """Git's pipes (this process's stdin and stdout), with the handshake answered on them."""

    def __init__(
        self, stdout: BinaryIO, reader: PktLineReader, writer: PktLineWriter, capabilities: set[str]
    ) -> None:
        self.stdout = stdout
        self.reader = reader
        self.writer = writer
        self.capabilities = capabilities


def answer_git() -> AnsweredGit:
    """Open this process's stdin and stdout for git's filter protocol and answer its handshake."""
    stdin, stdout = open_stdio_streams()
    reader, writer = PktLineReader(stdin), PktLineWriter(stdout)
    return AnsweredGit(stdout, reader, writer, answer_handshake(reader, writer))
