"""Shared output helpers: tables and JSON on stdout, and files named with -o or --plot."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import ThetaError
from ..repo_files import replaced_whole, symbolic_link_on_the_way
from ..terminal import printable

__all__ = ["print_table", "print_json", "OutputFileRefusedError", "replacing_output"]


class OutputFileRefusedError(ThetaError):
    """A file to write output to that is not a regular file, or is reached through a
    symbolic link in the work tree (which a commit may have placed there)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"{path}: {reason}; not written",
            hint="name a regular file, or a new one, whose folders in the work tree are "
            "directories",
        )
        self.path = path
        self.reason = reason


@contextlib.contextmanager
def replacing_output(target: Path, worktree: Path | None) -> Iterator[Path]:
    """A path of ``target``'s name in a new temporary folder beside it, renamed over
    ``target`` once written whole.

    Refused (:class:`OutputFileRefusedError`) when ``target`` exists and is not a
    regular file (a FIFO would block, a device or folder be replaced), or when a
    folder on its way inside ``worktree`` is a symbolic link: a commit can make
    ``plots/`` a link to anywhere, and the output would land there.
    """
    try:
        mode: int | None = target.lstat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        raise OutputFileRefusedError(target, "is a symbolic link")
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputFileRefusedError(target, "is not a regular file")
    if worktree is not None:
        try:
            parts = Path(os.path.abspath(target)).relative_to(worktree).parts
        except ValueError:
            parts = ()  # outside the work tree: no commit placed its folders
        link = symbolic_link_on_the_way(worktree, parts, last=False)
        if link is not None:
            raise OutputFileRefusedError(target, f"goes through the symbolic link {link}")
    with replaced_whole(target, ".theta-output-") as temporary:
        yield temporary


def print_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()
) -> None:
    # Names in rows come from the repository: escaped before the widths are measured.
    cells = [list(map(str, header))] + [[printable(str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=False))
        ]
        print("  ".join(parts).rstrip())


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
