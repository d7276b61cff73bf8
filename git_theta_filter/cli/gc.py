"""``git theta gc``: free objects that no manifest in this repository needs."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ..gc import DEFAULT_PRUNE, collect_garbage, parse_prune_date
from ..gitrepo import GitRepo
from ..units import human_bytes
from ._output import print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    for name in ("gc", "prune"):
        p = subparsers.add_parser(
            name,
            help="delete local objects that no manifest needs"
            + (" (same as gc)" if name == "prune" else ""),
            description="Delete objects from the local store that no manifest git keeps names "
            "(reachable from any ref, reflog, stash, note, any worktree's HEAD, index or "
            "per-worktree refs, or a stopped merge, cherry-pick or revert), and that are older "
            "than the grace period; an add that needed an object restarts its period. Also "
            "removes temp files left by killed processes.",
        )
        p.add_argument(
            "--dry-run",
            "-n",
            action="store_true",
            help="report what would be deleted; delete nothing",
        )
        p.add_argument(
            "--prune",
            default=DEFAULT_PRUNE,
            metavar="<date>",
            help=f"only delete objects older than this (git date syntax; default {DEFAULT_PRUNE}; "
            "'now' for all)",
        )
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    repo = GitRepo.discover()
    report = collect_garbage(repo, parse_prune_date(repo, args.prune), args.dry_run)
    if args.json:
        print_json({**asdict(report), "dry_run": args.dry_run})
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{verb} {len(report.deleted)} objects ({human_bytes(report.freed_bytes)}), "
        f"kept {report.kept} in use"
    )
    if report.kept_recent:
        print(f"kept {report.kept_recent} unused objects newer than --prune={args.prune}")
    if report.temp_files_removed:
        print(
            f"{'would remove' if args.dry_run else 'removed'} {report.temp_files_removed} "
            "leftover temp files"
        )
    return 0
