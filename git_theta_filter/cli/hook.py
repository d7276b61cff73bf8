"""``git theta hook <name>``: what the scripts in hooks/ run."""

from __future__ import annotations

import argparse
import sys

from ..gitrepo import GitRepo
from ..hooks import run_chained_hook
from ..prepush import objects_to_push, parse_ref_updates


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "hook",
        help="run one of our git hooks (called by the scripts in hooks/)",
        description="pre-push: refuse a push whose manifests need tensor objects missing from the "
        "local store, then run any hook of yours that ours replaced.",
    )
    p.add_argument("name", choices=["pre-push"])
    p.add_argument("hook_args", nargs="*", help="the arguments git gave the hook")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    repo = GitRepo.discover()
    stdin = sys.stdin.buffer.read()
    remote = args.hook_args[0] if args.hook_args else "origin"
    store = repo.store()
    missing = sorted(oid for oid in objects_to_push(repo, remote, parse_ref_updates(stdin)) if not store.has(oid))
    if missing:
        for oid in missing[:10]:
            print(f"git-theta: missing tensor object {oid}", file=sys.stderr)
        print(
            f"git-theta: error: refusing to push: {len(missing)} tensor object(s) behind these commits are not "
            "in the local store; run `git theta fsck` to see which files need them",
            file=sys.stderr,
        )
        return 1
    return run_chained_hook(repo, args.name, args.hook_args, stdin)
