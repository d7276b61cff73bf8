"""The one place that turns exceptions into messages and exit codes."""

from __future__ import annotations

import sys

from ..errors import ThetaError
from ..terminal import printable

__all__ = ["format_error", "report_error", "exit_code_for"]


def format_error(exc: BaseException, path: str | None = None) -> str:
    """One line: what failed, where, and the command that fixes it."""
    message = str(exc) if isinstance(exc, ThetaError) else f"{type(exc).__name__}: {exc}"
    if path and path not in message:
        message = f"{path}: {message}"
    hint = getattr(exc, "hint", None)
    if hint:
        message = f"{message}; {hint}"
    # One line whatever the message quotes (a file, tensor or metric name).
    return f"git-theta: error: {printable(message)}"


def report_error(exc: BaseException, path: str | None = None) -> None:
    print(format_error(exc, path), file=sys.stderr, flush=True)


def exit_code_for(exc: BaseException) -> int:
    return exc.exit_code if isinstance(exc, ThetaError) else 1
