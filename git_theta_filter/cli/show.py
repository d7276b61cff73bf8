"""``git theta show <rev>:<path> [-o FILE]``: a model file's real bytes at a revision."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..attributes import filters_at
from ..errors import ThetaError
from ..file_at import locate_file, write_file_at
from ..gitrepo import GitRepo
from ..installation import require_filter
from ._output import replacing_output


class BinaryToTerminalError(ThetaError):
    """Model bytes would go to a terminal."""

    exit_code = 2

    def __init__(self) -> None:
        super().__init__(
            "refusing to write a model file to a terminal",
            hint="redirect the output (> model.pth) or give -o FILE",
        )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "show",
        help="write a model file as it was at a revision, byte for byte",
        description="Write the file <rev>:<path> names (:<path> for the staged version) to "
        "standard output or FILE, byte for byte as a checkout of that revision would write it: "
        "`git show` gives the manifest git stores instead. Objects the local store lacks are "
        "fetched from the remote's store first. Files that theta does not track are written "
        "as git stores them. See also `git restore --source=<rev> -- <path>` "
        '(docs/remotes.md, "Getting a model out of history").',
    )
    p.add_argument("spec", metavar="<rev>:<path>", help="e.g. HEAD~2:model.pth")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        type=Path,
        help="write to FILE (replaced only once the whole file is written and checked)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    repo = GitRepo.discover()
    file = locate_file(repo, args.spec)
    if args.output is None:
        if sys.stdout.isatty():
            raise BinaryToTerminalError()
        out = sys.stdout.buffer
        write_file_at(repo, file, out.write)
        out.flush()
        return 0
    target: Path = args.output
    _refuse_unfiltered_work_tree_file(repo, target)
    with replacing_output(target, repo.worktree) as temporary, open(temporary, "xb") as handle:
        write_file_at(repo, file, handle.write)
    return 0


def _refuse_unfiltered_work_tree_file(repo: GitRepo, target: Path) -> None:
    """A real model file written to a theta-tracked path of a work tree whose git has no
    theta filter would be staged raw by the next ``git add``: refuse, as ``pull`` does."""
    if repo.worktree is None:
        return
    worktree = repo.worktree.resolve()
    try:
        relative = target.resolve().relative_to(worktree)
    except ValueError:
        return  # outside the work tree: git never sees it
    if filters_at(worktree, [relative.as_posix()]).get(relative.as_posix()) == "theta":
        require_filter(repo)
