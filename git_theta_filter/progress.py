"""Progress of a long operation, on stderr: one class for transfers and checks.

On a terminal the line is redrawn in place by tqdm, in git-lfs's manner
(``Uploading tensors: 45% (120/266), 1.2 GB/2.7 GB``); elsewhere nothing is
drawn and :meth:`Progress.finish` prints one summary line instead. The core
functions take the class as a parameter (as huggingface_hub takes
``tqdm_class``); :class:`QuietProgress` says nothing, and :class:`BarOnlyProgress`
leaves the summary to a caller that sums up several transfers in one line.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, TextIO

from .units import human_bytes

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["Progress", "QuietProgress", "BarOnlyProgress"]

# How often a live line is redrawn at most, in seconds.
REDRAW_INTERVAL = 0.1


class Progress:
    """Counts ``total`` items (and, when ``total_bytes`` is given, their bytes). Thread-safe."""

    # Whether this class shows anything at all.
    speaks = True

    def __init__(
        self,
        title: str,
        total: int,
        total_bytes: int | None = None,
        *,
        stream: TextIO | None = None,
    ) -> None:
        self.title = title
        self.total = total
        self.total_bytes = total_bytes
        self.done = 0
        self.done_bytes = 0
        self._stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._bar: tqdm | None = None
        if self.speaks and total > 0 and self._stream.isatty():
            # Imported only for a terminal: the filter's start-up must not pay for it.
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=title,
                file=self._stream,
                bar_format="{desc}: {percentage:.0f}% ({n_fmt}/{total_fmt}){postfix}",
                mininterval=REDRAW_INTERVAL,
                leave=True,
                postfix=self._bytes_done(),
            )

    def _bytes_done(self) -> str | None:
        """``1.2 GB/2.7 GB``, or None when bytes are not counted."""
        if self.total_bytes is None:
            return None
        return f"{human_bytes(self.done_bytes)}/{human_bytes(self.total_bytes)}"

    def advance(self, nbytes: int = 0) -> None:
        """One more item done, of ``nbytes`` bytes."""
        with self._lock:
            self.done += 1
            self.done_bytes += nbytes
            if self._bar is not None:
                size = self._bytes_done()
                if size is not None:
                    self._bar.set_postfix_str(size, refresh=False)
                self._bar.update(1)

    def finish(self, summary: str | None = None) -> None:
        """End the line; off a terminal, print ``summary`` (if any) as ``git-theta: <summary>``."""
        if self._bar is not None:
            self._bar.close()
        elif summary and self.speaks:
            self._stream.write(f"git-theta: {summary}\n")
        self._stream.flush()


class QuietProgress(Progress):
    """Counts like :class:`Progress` and shows nothing."""

    speaks = False


class BarOnlyProgress(Progress):
    """Draws the live line on a terminal like :class:`Progress`, but prints no summary:
    the caller prints one line for all its transfers."""

    def finish(self, summary: str | None = None) -> None:
        super().finish(None)
