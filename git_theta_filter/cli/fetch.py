"""``git theta fetch [<remote>] [<ref>...]``: download the tensor objects some refs need."""

from __future__ import annotations

import argparse

from ..gitrepo import GitRepo
from ..sync import fetch_objects


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fetch",
        help="download tensor objects from a remote's object store",
        description="Download the tensor objects of the model files in <ref>... (default HEAD) "
        "that the local store lacks, verifying each one's sha256. The work tree is not touched; "
        "see `git theta pull`. The store is found as described in docs/remotes.md.",
    )
    p.add_argument(
        "remote",
        nargs="?",
        help="the git remote whose store to use (default: every remote with a store, the "
        "current branch's first; see docs/remotes.md)",
    )
    p.add_argument(
        "refs",
        nargs="*",
        metavar="ref",
        help="refs whose files' objects to download (default HEAD)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="the objects of the whole history of the refs (all refs if none are given)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    repo = GitRepo.discover()
    fetch_objects(repo, args.remote, args.refs, all_history=args.all)
    return 0
