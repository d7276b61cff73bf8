"""The one place store files are written: every byte, through unbuffered files.

Kept apart so that a test can make every store write fail (a full disk) by
replacing :func:`write_all`; callers therefore look it up on this module.
"""

from __future__ import annotations

from typing import BinaryIO

__all__ = ["write_all"]


def write_all(file: BinaryIO, data: bytes | bytearray | memoryview) -> None:
    """Write every byte to an unbuffered file, which may take fewer per call."""
    view = memoryview(data).cast("B")
    while view:
        view = view[file.write(view) :]
