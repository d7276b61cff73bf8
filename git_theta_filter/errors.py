"""The base error of git-theta-filter.

Specific errors live beside the code that raises them and derive from
:class:`ThetaError`. ``cli/_errors.py`` is the one place that turns them into
messages and exit codes.
"""

from __future__ import annotations

__all__ = ["ThetaError"]


class ThetaError(Exception):
    """Base class for every error this package raises on purpose.

    ``hint`` is the command or action that fixes the problem, shown to the user
    after the message.
    """

    exit_code = 1
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint
