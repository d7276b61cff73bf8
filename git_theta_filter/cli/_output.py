"""Shared output helpers: tables and JSON on stdout."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from ..terminal import printable

__all__ = ["print_table", "print_json"]


def print_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()
) -> None:
    # Names in rows come from the repository: escaped before the widths are measured.
    cells = [list(map(str, header))] + [[printable(str(c)) for c in row] for row in rows]
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
