"""``git theta push [<remote>] [<ref>...]``: make a remote's store hold what some refs need."""

from __future__ import annotations

import argparse
import sys

from ..gitrepo import GitRepo
from ..remotes import default_remote
from ..sync import push_objects


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "push",
        help="upload tensor objects to a remote's object store",
        description="Make <remote>'s object store hold every tensor object that the history of "
        "<ref>... (default HEAD) needs: the store is asked which it lacks (not the tracking "
        "refs), so this repairs a push that skipped the pre-push hook (git push --no-verify, a "
        "machine without git-theta). Objects this clone lacks are copied from another remote's "
        "store. `git push` uploads by itself through the pre-push hook. The store is found as "
        "described in docs/remotes.md.",
    )
    p.add_argument(
        "remote", nargs="?", help="the git remote (default: the current branch's, else origin)"
    )
    p.add_argument(
        "refs", nargs="*", metavar="ref", help="refs whose history to upload (default HEAD)"
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="every ref's history when no <ref> is given, e.g. to fill a new store or a mirror's",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    repo = GitRepo.discover()
    result, url = push_objects(
        repo, args.remote or default_remote(repo), args.refs, all_refs=args.all
    )
    if not result.transferred:
        # The transfer prints its own line when it moves something.
        print(
            f"git-theta: nothing to upload: {url} already has all {result.skipped}", file=sys.stderr
        )
    return 0
