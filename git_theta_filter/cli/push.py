"""``git theta push [<remote>] [<ref>...]``: upload the tensor objects behind some refs."""

from __future__ import annotations

import argparse

from ..gitrepo import GitRepo
from ..remotes import default_remote
from ..sync import push_objects


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "push",
        help="upload tensor objects to a remote's object store",
        description="Upload the tensor objects that the commits of <ref>... (default HEAD) need "
        "and that <remote>'s tracking refs do not already account for, skipping objects the store "
        "has. `git push` does this by itself through the pre-push hook. The store is found as "
        "described in docs/remotes.md.",
    )
    p.add_argument(
        "remote", nargs="?", help="the git remote (default: the current branch's, else origin)"
    )
    p.add_argument(
        "refs", nargs="*", metavar="ref", help="refs whose objects to upload (default HEAD)"
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="every object in the whole history of the refs (all refs if none are given), e.g. "
        "to fill a new store",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    repo = GitRepo.discover()
    push_objects(repo, args.remote or default_remote(repo), args.refs, all_history=args.all)
    return 0
