"""Blobs read as streams from one ``git cat-file --batch`` process.

pygit2 (libgit2) reads a whole object into memory; a raw 500 MB checkpoint in
history would cost 500 MB per read. ``git cat-file --batch`` streams a blob's
content straight from the loose object or pack, so a consumer holds one chunk
at a time. In a partial clone, git fetches a missing blob from the promisor
remote on the way.

git's contract (git-cat-file(1), BATCH OUTPUT): for each object name on
stdin it prints ``<oid> SP <type> SP <size> LF``, then exactly ``<size>``
bytes of content, then ``LF``; for an object it cannot find,
``<name> SP missing LF``.
"""

from __future__ import annotations

import subprocess
import weakref
from pathlib import Path
from typing import IO

from .errors import ThetaError
from .gitrepo import git_stream

__all__ = ["BlobMissingError", "BlobStream", "BlobStreamer"]


class BlobMissingError(ThetaError):
    exit_code = 128

    def __init__(self, blob_id: str, path: str | None = None) -> None:
        where = f"{path}: " if path else ""
        super().__init__(f"{where}blob {blob_id} is not in this repository")
        self.blob_id = blob_id
        self.path = path


class BlobStream:
    """The content of one blob; :meth:`readinto` returns 0 at its end."""

    def __init__(self, stdout: IO[bytes], size: int) -> None:
        self._stdout = stdout
        self.size = size
        self._left = size

    def readinto(self, buffer: memoryview | bytearray) -> int:
        if not self._left:
            return 0
        view = memoryview(buffer).cast("B")[: self._left]
        count = self._stdout.readinto(view)  # type: ignore[attr-defined]
        if not count:
            raise ThetaError("`git cat-file --batch` ended in the middle of a blob")
        self._left -= count
        return count

    def drain(self) -> None:
        """Skip what the reader left unread, and the LF after the content."""
        buffer = memoryview(bytearray(1 << 16))
        while self.readinto(buffer):
            pass
        if self._stdout.read(1) != b"\n":
            raise ThetaError("`git cat-file --batch` sent a malformed record")


def _end(process: subprocess.Popen) -> None:
    if process.stdin is not None:
        process.stdin.close()
    if process.stdout is not None:
        process.stdout.close()
    process.wait()


class BlobStreamer:
    """One ``git cat-file --batch`` process; :meth:`open` one blob at a time."""

    def __init__(self, git_dir: Path) -> None:
        self._process = git_stream([f"--git-dir={git_dir}", "cat-file", "--batch"])
        self._current: BlobStream | None = None
        # A reader dropped without close() (a generator left half-read) still ends git.
        self._finalizer = weakref.finalize(self, _end, self._process)

    def open(self, blob_id: str, path: str | None = None) -> BlobStream:
        """The blob's content; the previous stream is drained first."""
        assert self._process.stdin is not None and self._process.stdout is not None
        if self._current is not None:
            self._current.drain()
            self._current = None
        self._process.stdin.write(f"{blob_id}\n".encode())
        self._process.stdin.flush()
        header = self._process.stdout.readline().split()
        if len(header) != 3 or not header[2].isdigit():
            raise BlobMissingError(blob_id, path)
        stream = BlobStream(self._process.stdout, int(header[2]))
        if header[1] != b"blob":
            stream.drain()
            raise BlobMissingError(blob_id, path)
        self._current = stream
        return stream

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> BlobStreamer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
