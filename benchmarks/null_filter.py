#!/usr/bin/env python3
"""A long-running clean filter that does nothing but read: the floor of ``git add``
through a process filter (benchmarks/run.py, "Floor").

git reads the file and sends it through the pipe in pkt-lines, as it does for
theta and git-lfs; this filter reads it with the same reader theta uses and
answers a one-line "pointer". With ``--sha256`` it also hashes every byte on its
reading thread, the least any filter that names content by its sha256 does.

    git -c filter.floor.process="python benchmarks/null_filter.py --sha256" add model.pth
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from git_theta_filter.pktline import (  # noqa: E402 - after the path above
    PktLineReader,
    PktLineWriter,
    open_stdio_streams,
)

_READ_SIZE = 1 << 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sha256", action="store_true", help="hash what is read")
    args = parser.parse_args()
    stdin, stdout = open_stdio_streams()
    reader, writer = PktLineReader(stdin), PktLineWriter(stdout)
    reader.read_text_list()
    writer.write_text_list(["git-filter-server", "version=2"])
    stdout.flush()
    reader.read_text_list()
    writer.write_text_list(["capability=clean"])
    stdout.flush()
    buffer = bytearray(_READ_SIZE)
    view = memoryview(buffer)
    while True:
        try:
            reader.read_text_list()  # command=clean, pathname=...
        except EOFError:
            return 0
        reader.start_content()
        digest = hashlib.sha256()
        size = 0
        while count := reader.readinto(buffer):
            size += count
            if args.sha256:
                digest.update(view[:count])
        writer.write_text_list(["status=success"])
        writer.write_content(f"floor {size} {digest.hexdigest()}\n".encode())
        writer.flush_packet()
        writer.write_text_list([])
        stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
