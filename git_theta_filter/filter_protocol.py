"""Git's long-running filter protocol (``filter.<driver>.process``), version 2.

Git's contract (gitattributes(5), "Long Running Filter Process"), all in pkt-lines:

* Handshake: versions, then capabilities (``filter_handshake.py``, which is
  light enough to answer git before the filter has loaded anything else).
* Each request: ``command=clean|smudge``, ``pathname=<path>`` and possibly
  more ``key=value`` lines, flush, the content packets, flush. The filter
  reads the whole request before answering. A smudge for a checkout of a
  commit also has ``ref=`` (when a branch is checked out), ``treeish=<commit>``
  and ``blob=<blob id>`` (git 2.27+); ``treeish`` reaches the handler.
* Each response: ``status=success``, flush, the content packets, flush, then
  a second status list; an empty one (just flush) keeps "success", and
  ``status=error`` there marks the file failed even after content was sent.
  ``status=error`` in the first list fails this file without content;
  ``status=abort`` would stop Git sending the command at all.

This module is the state machine only; what clean and smudge do is the
handler's business. stdout belongs to Git: logs go to stderr.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from .filter_handshake import CAPABILITIES, ProtocolError, answer_handshake
from .pktline import PktLineError, PktLineReader, PktLineWriter

__all__ = ["FilterHandler", "SmudgeOutput", "ProtocolError", "serve", "CAPABILITIES"]


class SmudgeOutput(Protocol):
    def write(self, write: Callable[[memoryview], object]) -> None: ...


class FilterHandler(Protocol):
    """Both commands read the content themselves, so each can bound what it buffers."""

    def clean(self, pathname: str, content: PktLineReader) -> bytes: ...

    def prepare_smudge(
        self, pathname: str, content: PktLineReader, treeish: str | None
    ) -> SmudgeOutput: ...


Report = Callable[[BaseException, str], None]
T = TypeVar("T")


def serve(
    reader: PktLineReader,
    writer: PktLineWriter,
    handler: FilterHandler,
    report: Report,
    capabilities: set[str] | None = None,
) -> None:
    """Handshake, then answer requests until Git closes the pipe.

    ``capabilities`` are those of a handshake already answered on these pipes
    (:func:`filter_handshake.answer_git`); without them, it is answered here.
    """
    if capabilities is None:
        capabilities = answer_handshake(reader, writer)
    while True:
        try:
            header_lines = reader.read_text_list()
        except EOFError:
            return
        headers = dict(line.partition("=")[::2] for line in header_lines)
        command, pathname = headers.get("command"), headers.get("pathname", "")
        if command not in capabilities:
            reader.start_content()
            reader.drain_content()
            report(ProtocolError(f"unsupported command {command!r}"), pathname)
            writer.write_text_list(["status=error"])
        elif command == "clean":
            _serve_clean(reader, writer, handler, report, pathname)
        else:
            _serve_smudge(reader, writer, handler, report, pathname, headers.get("treeish"))


def _accept_request(
    reader: PktLineReader,
    writer: PktLineWriter,
    report: Report,
    pathname: str,
    take: Callable[[PktLineReader], T],
) -> T | None:
    """Hand the request's content to ``take``, then answer its first status list; None when refused.

    The whole request is read before answering, even a refused one: on any
    error the rest of the content is drained, the error reported, and the
    answer is ``status=error``. A broken pkt-line stream is not this file's
    fault and ends the process.
    """
    reader.start_content()
    try:
        result = take(reader)
        reader.drain_content()
    except PktLineError:
        raise
    except Exception as exc:
        reader.drain_content()
        report(exc, pathname)
        writer.write_text_list(["status=error"])
        return None
    writer.write_text_list(["status=success"])
    return result


def _serve_clean(
    reader: PktLineReader,
    writer: PktLineWriter,
    handler: FilterHandler,
    report: Report,
    pathname: str,
) -> None:
    manifest = _accept_request(
        reader, writer, report, pathname, lambda content: handler.clean(pathname, content)
    )
    if manifest is None:
        return
    writer.write_content(manifest)
    writer.flush_packet()
    writer.write_text_list([])


def _serve_smudge(
    reader: PktLineReader,
    writer: PktLineWriter,
    handler: FilterHandler,
    report: Report,
    pathname: str,
    treeish: str | None,
) -> None:
    output = _accept_request(
        reader,
        writer,
        report,
        pathname,
        lambda content: handler.prepare_smudge(pathname, content, treeish),
    )
    if output is None:
        return
    try:
        output.write(writer.write_content)
    except Exception as exc:
        report(exc, pathname)
        writer.flush_packet()
        writer.write_text_list(["status=error"])
        return
    writer.flush_packet()
    writer.write_text_list([])
