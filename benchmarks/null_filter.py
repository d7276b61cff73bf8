#!/usr/bin/env python3
"""A long-running clean filter that does nothing but read: the floor of ``git add``
through a process filter (benchmarks/run.py, "Floor").

git reads the file and sends it through the pipe in pkt-lines, as it does for
theta and git-lfs; this filter speaks the protocol with theta's own state machine
(``filter_protocol.serve``) and reader, reads the content, and answers a one-line
"pointer". With ``--sha256`` it also hashes every byte on its reading thread, the
least any filter that names content by its sha256 does.

    git -c filter.floor.process="python benchmarks/null_filter.py --sha256" add model.pth
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from git_theta_filter.filter_protocol import serve  # noqa: E402 - after the path above
from git_theta_filter.pktline import (  # noqa: E402
    PktLineReader,
    PktLineWriter,
    open_stdio_streams,
)

_READ_SIZE = 1 << 20


class ReadingOnly:
    """A filter handler whose clean reads the content (and hashes it, if asked)."""

    def __init__(self, hash_content: bool) -> None:
        self._hash_content = hash_content
        self._buffer = bytearray(_READ_SIZE)

    def clean(self, pathname: str, content: PktLineReader) -> bytes:
        view = memoryview(self._buffer)
        digest = hashlib.sha256()
        size = 0
        while count := content.readinto(view):
            size += count
            if self._hash_content:
                digest.update(view[:count])
        return f"floor {size} {digest.hexdigest()}\n".encode()

    def prepare_smudge(self, pathname: str, content: PktLineReader, treeish: str | None):
        raise NotImplementedError("the floor filter only cleans")


def _report(error: BaseException, pathname: str) -> None:
    print(f"null_filter.py: {pathname}: {error}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sha256", action="store_true", help="hash what is read")
    args = parser.parse_args()
    stdin, stdout = open_stdio_streams()
    serve(PktLineReader(stdin), PktLineWriter(stdout), ReadingOnly(args.sha256), _report)
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
