"""Sizes and numbers as people and scripts read them: shared by the commands, the JSON
output and the transfer progress.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["human_bytes", "json_number"]


def human_bytes(count: int) -> str:
    """``count`` bytes in decimal units: ``512 B``, ``1.2 GB``."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def json_number(value: float | int | bool | None) -> Any:
    """A JSON value for a number: non-finite floats become the strings ``nan``, ``inf``,
    ``-inf``.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value
