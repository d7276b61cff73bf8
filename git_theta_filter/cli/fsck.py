"""``git theta fsck``: re-hash the store and find missing objects."""

from __future__ import annotations

import argparse
import sys

from ..gitrepo import GitRepo
from ..inventory import fsck
from ._output import Progress, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fsck",
        help="verify stored objects and find missing ones",
        description="Re-hash every object in the local store and report corrupt ones; report objects "
        "that the index or HEAD (with --all: any ref's history) needs but the store lacks. "
        "Exits 1 when anything is wrong.",
    )
    p.add_argument("--all", action="store_true", help="check the manifests of every ref's history, not just HEAD")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    progress: Progress | None = None

    def on_progress(done: int, total: int) -> None:
        nonlocal progress
        progress = progress or Progress("Checking objects", total)
        progress.advance()

    report = fsck(GitRepo.discover(), args.all, on_progress)
    if progress:
        progress.close()
    if args.json:
        print_json({"ok": report.ok, "checked": report.checked, "corrupt": report.corrupt, "missing": report.missing})
    else:
        for oid, reason in sorted(report.corrupt.items()):
            print(f"corrupt {oid}: {reason}")
        for oid, paths in sorted(report.missing.items()):
            print(f"missing {oid} (needed by {', '.join(sorted(set(paths)))})")
        summary = f"{report.checked} objects checked, {len(report.corrupt)} corrupt, {len(report.missing)} missing"
        print(summary)
        if not report.ok:
            print("git-theta: hint: run `git theta fetch` to restore missing or corrupt objects from the remote store", file=sys.stderr)
    return 0 if report.ok else 1
