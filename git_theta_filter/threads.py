"""Worker threads made on first use.

The store and the clean parser each keep a process-wide pool. Made at import,
they would load ``concurrent.futures`` (and through it ``logging``): about
3 ms of every filter start, most of which never submits work (a clean the
cache answers, a file of small objects).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["LazyThreadPool"]


class LazyThreadPool:
    """A ``ThreadPoolExecutor`` of ``max_workers`` threads, made by the first :meth:`submit`."""

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        self.max_workers = max_workers
        self._thread_name_prefix = thread_name_prefix
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, function: Callable[..., Any], /, *args: Any) -> Future:
        if self._pool is None:
            with self._lock:  # two threads submitting first must share one pool
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._pool = ThreadPoolExecutor(self.max_workers, self._thread_name_prefix)
        return self._pool.submit(function, *args)
