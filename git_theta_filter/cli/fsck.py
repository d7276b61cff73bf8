"""``git theta fsck``: re-hash the store and find missing objects; optionally audit pickles."""

from __future__ import annotations

import argparse
import sys

from ..gitrepo import GitRepo
from ..inventory import fsck
from ..progress import Progress
from ._output import print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fsck",
        help="verify stored objects and find missing ones",
        description="Re-hash every object in the local store and report corrupt ones, "
        "moving each to <git dir>/theta/bad/ so that `git theta fetch` can restore a good copy; "
        "report objects that the index or HEAD (with --all: any ref's history) needs but the "
        "store lacks. Exits 1 when anything is wrong.",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="check the manifests of every ref's history, not just HEAD",
    )
    p.add_argument(
        "--check-pickles",
        action="store_true",
        help="also list, per model file, the globals its data.pkl would call on load beyond the "
        "inert ones a plain state_dict uses (read without running it); "
        "exits 1 when any file has one",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    progress: Progress | None = None

    def on_progress(done: int, total: int) -> None:
        nonlocal progress
        progress = progress or Progress("Checking objects", total)
        progress.advance()

    repo = GitRepo.discover()
    report = fsck(repo, args.all, on_progress)
    if progress:
        progress.finish()
    pickles = None
    if args.check_pickles:
        # Imported here: only this option needs the zip reader and the scanner.
        from ..pickle_check import check_pickles

        pickles = check_pickles(repo, args.all)
    flagged = [p for p in pickles or [] if p.suspicious]
    if args.json:
        out = {
            "ok": report.ok,
            "checked": report.checked,
            "corrupt": report.corrupt,
            "missing": report.missing,
        }
        if pickles is not None:
            out["pickles"] = [
                {
                    "path": p.path,
                    "blob": p.blob_id,
                    "foreign_globals": p.foreign_globals,
                    "unchecked": p.unchecked,
                }
                for p in pickles
            ]
        print_json(out)
    else:
        for oid, reason in sorted(report.corrupt.items()):
            print(f"corrupt {oid}: {reason}; moved to {report.quarantined[oid]}")
        for oid, paths in sorted(report.missing.items()):
            print(f"missing {oid} (needed by {', '.join(sorted(set(paths)))})")
        for p in flagged:
            what = f"unchecked: {p.unchecked}" if p.unchecked else ", ".join(p.foreign_globals)
            print(f"pickle {p.path} (blob {p.blob_id[:12]}): {what}")
        summary = (
            f"{report.checked} objects checked, {len(report.corrupt)} corrupt, "
            f"{len(report.missing)} missing"
        )
        if pickles is not None:
            summary += f"; {len(pickles)} file versions checked for pickles, {len(flagged)} flagged"
        print(summary)
        if not report.ok:
            print(
                "git-theta: hint: run `git theta fetch` to restore missing or corrupt objects "
                "from the remote store",
                file=sys.stderr,
            )
        if flagged:
            print(
                "git-theta: hint: do not torch.load(weights_only=False) a flagged file from an "
                "untrusted source",
                file=sys.stderr,
            )
    return 0 if report.ok and not flagged else 1
