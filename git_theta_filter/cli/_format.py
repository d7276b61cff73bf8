"""Numbers, colour and sparklines for the terminal output of theta-log and theta-diff."""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from ..terminal import printable

__all__ = [
    "format_value",
    "format_change",
    "sparkline",
    "Colour",
    "Styled",
    "table_lines",
    "markdown_code",
    "markdown_table",
]

_BARS = "▁▂▃▄▅▆▇█"


def format_value(value: float | int | bool | None, missing: str = "-") -> str:
    """Four significant digits for floats; integers and booleans as they are."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return repr(value)
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3e}"


def format_change(value: float | int | None) -> str:
    if value is None:
        return "-"
    return ("+" if value > 0 else "") + format_value(value)


def sparkline(values: Sequence[float | None]) -> str:
    """One bar per value, scaled between the smallest and largest;
    a space where a value is missing.
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    # Halved before subtracting: the span of -1.7e308 and 1.7e308 overflows a float.
    low, high = min(finite) / 2, max(finite) / 2
    bars = []
    for value in values:
        if value is None or not math.isfinite(value):
            bars.append(" ")
        elif high == low:
            bars.append(_BARS[len(_BARS) // 2])
        else:
            bars.append(_BARS[round((value / 2 - low) / (high - low) * (len(_BARS) - 1))])
    return "".join(bars)


class Colour:
    """ANSI colour when the stream is a terminal and NO_COLOR is unset; plain text otherwise."""

    _CODES = {"green": "32", "red": "31", "yellow": "33", "cyan": "36", "bold": "1", "dim": "2"}

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.enabled = (
            stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        )

    def __call__(self, text: str, colour: str) -> str:
        if not self.enabled or not text:
            return text
        return f"\x1b[{self._CODES[colour]}m{text}\x1b[0m"


def markdown_code(name: str) -> str:
    """``name`` (from a commit) as a Markdown code span: its control characters and
    newlines escaped, fenced by one backtick more than its longest run of them.

    In a code span a link, an image, HTML, an entity or a mention is text; a
    shorter fence would end at a backtick in the name, and what follows would be
    Markdown again.
    """
    text = printable(name)
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    # A space each side is dropped from the span when both are there; needed beside a backtick.
    if text.startswith(("`", " ")) or text.endswith(("`", " ")):
        text = f" {text} "
    return f"{fence}{text}{fence}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def escape(cell: str) -> str:
        return printable(cell).replace("|", "\\|")

    lines = [
        "| " + " | ".join(escape(c) for c in header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return lines


@dataclass(frozen=True)
class Styled:
    """A table cell shown in a colour (when colour is enabled)."""

    text: str
    colour: str

    def __str__(self) -> str:
        return self.text


def table_lines(
    header: Sequence[str],
    rows: Sequence[Sequence[str | Styled]],
    colour: Colour,
    right: Sequence[int] = (),
    indent: str = "",
) -> list[str]:
    """Aligned columns, two spaces apart;
    colour is applied after padding so it does not skew widths.
    """
    # Names (paths, tensors, metrics, subjects) are escaped before widths are measured.
    cells = [[printable(str(c)) for c in row] for row in [list(header), *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for number, row in enumerate([list(header), *rows]):
        parts = []
        for i, cell in enumerate(row):
            text = cells[number][i]
            padded = text.rjust(widths[i]) if i in right else text.ljust(widths[i])
            if isinstance(cell, Styled):
                padded = padded.replace(text, colour(text, cell.colour), 1)
            elif number == 0:
                padded = colour(padded, "bold")
            parts.append(padded)
        lines.append((indent + "  ".join(parts)).rstrip())
    return lines
