"""Text for a terminal: names from a repository shown with control characters escaped.

File names, tensor names, metric names, commit subjects and the messages
that quote them come from whoever made the commit (docs/security.md,
class 8). Printed raw, an escape sequence in one could recolour, hide or
rewrite what the terminal shows, or set its title; a newline could forge an
output line. Two layers keep them inert, as git quotes odd paths:

* :func:`printable` escapes every character that is not printable (C0 and C1
  controls, DEL, bidirectional and other format characters, line and
  paragraph separators, undecodable bytes) as ``\\x1b``, ``\\u202e``, ``\\n``
  or, for a byte that was not UTF-8, ``\\xff``. Tables and messages apply it to each
  name they show.
* :func:`escaping_output` wraps ``sys.stdout`` and ``sys.stderr`` for every
  command, so whatever reaches them as text is escaped the same way, except
  newlines and, on a terminal's stdout, the colour codes of
  ``cli/_format.Colour``. Bytes written to ``.buffer`` (``git theta show``,
  the filter's pkt-lines) pass untouched, and ``--json`` output is ASCII
  already (``json.dump`` escapes every control character), so it stays exact.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["printable", "escape_output", "EscapingStream", "escaping_output"]

# The only escape sequences of ours: Colour's SGR codes (reset, bold, dim, and colours).
_OUR_COLOURS = r"\x1b\[(?:0|1|2|3[1-6])m"
_COLOURED = re.compile(rf"({_OUR_COLOURS})")


_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape_character(character: str) -> str:
    if character in _SHORT:
        return _SHORT[character]
    code = ord(character)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with every non-printable character escaped; cut to ``limit`` characters."""
    if text.isprintable():
        escaped = text
    else:
        escaped = "".join(c if c.isprintable() else _escape_character(c) for c in text)
    if limit is not None and len(escaped) > limit:
        return escaped[: limit - 3] + "..."
    return escaped


def escape_output(text: str, *, keep_colour: bool = False) -> str:
    """Text on its way to the terminal: :func:`printable` line by line, keeping
    newlines and (with ``keep_colour``) our own colour codes."""
    if text.isprintable():
        return text
    parts = _COLOURED.split(text) if keep_colour else [text]
    out = []
    for index, part in enumerate(parts):
        if index % 2:  # a colour code of ours, kept by split's capturing group
            out.append(part)
        else:
            out.append("\n".join(printable(line) for line in part.split("\n")))
    return "".join(out)


class EscapingStream:
    """A text stream that passes everything written through :func:`escape_output`."""

    def __init__(self, stream: TextIO, *, keep_colour: bool) -> None:
        self._stream = stream
        self._keep_colour = keep_colour

    def write(self, text: str) -> int:
        self._stream.write(escape_output(text, keep_colour=self._keep_colour))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, buffer, encoding ...
        return getattr(self._stream, name)


@contextlib.contextmanager
def escaping_output() -> Iterator[None]:
    """Escape what the command writes to stdout and stderr as text, while it runs."""
    stdout, stderr = sys.stdout, sys.stderr
    colour = bool(getattr(stdout, "isatty", lambda: False)())
    sys.stdout = EscapingStream(stdout, keep_colour=colour)  # type: ignore[assignment]
    sys.stderr = EscapingStream(stderr, keep_colour=False)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr
