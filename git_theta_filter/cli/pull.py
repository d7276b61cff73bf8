"""``git theta pull [<remote>]``: download the checked-out files' objects and write the files."""

from __future__ import annotations

import argparse
import sys

from ..gitrepo import GitRepo
from ..sync import pull


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pull",
        help="download the checked-out model files' objects and write the files",
        description="Download the tensor objects that the checked-out model files need, "
        "then write every model file that is still a manifest in the work tree (e.g. "
        "after a clone with GIT_THETA_SKIP_SMUDGE=1), streaming it from the store, "
        "and refresh the index so `git status` stays clean. "
        "Run `git pull` first to update the commit itself.",
    )
    p.add_argument(
        "remote",
        nargs="?",
        help="the git remote whose store to use (default: every remote with a store, the "
        "current branch's first; see docs/remotes.md)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    repo = GitRepo.discover()
    result = pull(repo, args.remote)
    if result.written:
        print(
            f"git-theta: wrote {len(result.written)} model file(s): {', '.join(result.written)}",
            file=sys.stderr,
        )
    return 0
