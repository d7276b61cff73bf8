"""Sizes as people read them, shared by the commands and the transfer progress."""

from __future__ import annotations

__all__ = ["human_bytes"]


def human_bytes(count: int) -> str:
    """``count`` bytes in decimal units: ``512 B``, ``1.2 GB``."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
