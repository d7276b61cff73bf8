"""The lock between object writers and ``git theta gc``.

Writers (the filter process, and anything else that cleans) hold a shared
lock on ``theta/gc.lock`` for as long as they may write objects; gc takes it
exclusively. So gc waits for an ``add`` in progress and never deletes the
objects it has written but not yet put in the index, even with
``--prune=now``. Kept apart from gc so the filter imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import fcntl
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["writer_lock", "exclusive_gc_lock"]


@contextlib.contextmanager
def _lock(theta_dir: Path, mode: int) -> Iterator[None]:
    theta_dir.mkdir(parents=True, exist_ok=True)
    with open(theta_dir / "gc.lock", "a") as handle:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if mode == fcntl.LOCK_EX:
                print(
                    "git-theta: waiting for running git commands to finish writing objects",
                    file=sys.stderr,
                )
            fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def writer_lock(theta_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Held (shared) by anything that writes objects."""
    return _lock(theta_dir, fcntl.LOCK_SH)


def exclusive_gc_lock(theta_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Held by gc while it decides and deletes: no writer runs meanwhile."""
    return _lock(theta_dir, fcntl.LOCK_EX)
