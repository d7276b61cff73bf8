"""Shared output helpers: sizes, tables, JSON, progress on stderr."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["human_bytes", "print_table", "print_json", "Progress"]


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def print_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()
) -> None:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=False))
        ]
        print("  ".join(parts).rstrip())


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


class Progress:
    """``label: 45% (120/266)`` redrawn on a TTY stderr; silent otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._enabled = sys.stderr.isatty() and total > 0
        self._last = 0.0

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self._enabled and (now - self._last > 0.1 or self.done == self.total):
            self._last = now
            percent = 100 * self.done // self.total
            sys.stderr.write(f"\r{self.label}: {percent}% ({self.done}/{self.total})")
            sys.stderr.flush()

    def close(self) -> None:
        if self._enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
