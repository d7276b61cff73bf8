"""``git theta track`` / ``git theta untrack``: .gitattributes patterns."""

from __future__ import annotations

import argparse

from ..gitrepo import GitRepo
from ..installation import ATTRIBUTES, track, tracked_patterns, untrack


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "track",
        help="route files matching a pattern through theta",
        description=f"Append '<pattern> {ATTRIBUTES}' to .gitattributes for each pattern, and make "
        "sure this repository's hooks are installed. With no pattern, list the tracked patterns.",
    )
    p.add_argument("patterns", nargs="*", help="gitattributes patterns, e.g. '*.pth'")
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
    for line in track(repo, args.patterns):
        print(line)
    return 0


def run_untrack(args: argparse.Namespace) -> int:
    for line in untrack(GitRepo.discover(), args.patterns):
        print(line)
    return 0
