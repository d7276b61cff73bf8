"""The one place that turns exceptions into messages and exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..errors import ThetaError
from ..terminal import escaping_output, printable

__all__ = ["format_error", "report_error", "exit_code_for", "run_reporting"]


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


def run_reporting(command: Callable[[], int]) -> int:
    """Run an entry point's ``command``; an error becomes one line on stderr and git's exit code.

    Ctrl-C exits 130 and a closed pipe (``| head``) 141, as a shell reports them.
    Names from the repository reach the terminal escaped (terminal.py); bytes
    written to ``sys.stdout.buffer`` (show, the remote helper's answers) pass untouched.
    """
    with escaping_output():
        try:
            return command()
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            return 141
        except Exception as exc:  # the one place errors become messages
            report_error(exc)
            return exit_code_for(exc)
