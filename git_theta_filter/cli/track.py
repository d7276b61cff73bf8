"""``git theta track`` / ``git theta untrack``: .gitattributes patterns."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..adoption import shell_expansion_warning
from ..gitrepo import GitRepo
from ..installation import ATTRIBUTES, track, tracked_patterns, untrack


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "track",
        help="route files matching a pattern through theta",
        description=f"Append '<pattern> {ATTRIBUTES}' to .gitattributes for each pattern, and make "
        "sure this repository's hooks are installed. With no pattern, list the tracked patterns. "
        "Files already committed without theta are listed with the command that stores them "
        "through theta; a pattern that git-lfs tracks is refused unless --replace-lfs is given "
        "(docs/migrate.md).",
    )
    p.add_argument("patterns", nargs="*", help="gitattributes patterns, e.g. '*.pth' (quoted)")
    p.add_argument(
        "--renormalize",
        action="store_true",
        help="stage files already committed raw (or as git-lfs pointers) again through theta "
        "(git add --renormalize), ready to commit",
    )
    p.add_argument(
        "--replace-lfs",
        action="store_true",
        help="when git-lfs tracks the pattern, replace its .gitattributes line with theta's; "
        "old versions stay git-lfs pointers, read from .git/lfs/objects",
    )
    p.set_defaults(run=run_track)
    p = subparsers.add_parser(
        "untrack",
        help="stop routing a pattern through theta",
        description="Remove the patterns' lines from .gitattributes.",
    )
    p.add_argument("patterns", nargs="+")
    p.set_defaults(run=run_untrack)


def run_track(args: argparse.Namespace) -> int:
    repo = GitRepo.discover()
    if not args.patterns:
        for pattern in tracked_patterns(repo):
            print(pattern)
        return 0
    warning = shell_expansion_warning(args.patterns, Path.cwd())
    if warning:
        print(f"git-theta: warning: {warning}", file=sys.stderr)
    for line in track(
        repo, args.patterns, renormalize=args.renormalize, replace_lfs=args.replace_lfs
    ):
        print(line)
    return 0


def run_untrack(args: argparse.Namespace) -> int:
    for line in untrack(GitRepo.discover(), args.patterns):
        print(line)
    return 0
