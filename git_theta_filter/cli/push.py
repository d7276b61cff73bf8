"""``git theta push [<remote>] [<ref>...]``: make a remote's store hold what some refs need."""

from __future__ import annotations

import argparse
import sys

from ..gitrepo import GitRepo
from ..progress import BarOnlyProgress
from ..remotes import default_remote
from ..store.transfer import TransferResult
from ..sync import push_objects
from ..units import human_bytes


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
        repo,
        args.remote or default_remote(repo),
        args.refs,
        all_refs=args.all,
        progress=BarOnlyProgress,
    )
    print(f"git-theta: {url}: {summary(result)}", file=sys.stderr)
    return 0


def summary(result: TransferResult) -> str:
    """What the push did, in one line: ``uploaded 12 tensor objects, 48 MB; the store already
    had 130`` (the uploads and the copies from other stores summed up)."""
    if not result.transferred and not result.skipped:
        return "nothing to upload: no model file in the history pushed"
    if not result.transferred:
        return f"nothing to upload; the store already had all {result.skipped}"
    plural = "s" * (result.transferred != 1)
    line = f"uploaded {result.transferred} tensor object{plural}, "
    line += human_bytes(result.transferred_bytes)
    if result.copied:
        line += f" ({result.copied} copied from other remotes' stores)"
    return f"{line}; the store already had {result.skipped}"
