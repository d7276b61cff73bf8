"""Sizes and numbers as people and scripts read them: shared by the commands, the JSON
output and the transfer progress; and the digits a parser of untrusted text may convert.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["MAX_INTEGER_DIGITS", "bounded_integer_digits", "human_bytes", "json_number"]

# Python's own default limit on the digits int() converts from decimal text.
MAX_INTEGER_DIGITS = 4300


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


@contextlib.contextmanager
def bounded_integer_digits() -> Iterator[None]:
    """Python's default limit on integer digits, whatever the interpreter's is now.

    Converting n decimal digits costs n² time; a parser of untrusted text runs
    inside this, so ``PYTHONINTMAXSTRDIGITS=0`` (or a raised limit) does not
    lift its budget. The setting is process-wide; another thread converting a
    longer integer meanwhile would be refused too, which no caller of ours ever does.
    """
    before = sys.get_int_max_str_digits()
    if before and before <= MAX_INTEGER_DIGITS:
        yield
        return
    sys.set_int_max_str_digits(MAX_INTEGER_DIGITS)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(before)
