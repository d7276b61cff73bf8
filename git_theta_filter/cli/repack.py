"""``git theta repack``: consolidate the local store's packs and small loose objects."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ..gitrepo import GitRepo
from ..locks import exclusive_gc_lock
from ..store.repack import repack
from ..units import human_bytes
from ._output import print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "repack",
        help="put packs and small loose objects into one pack",
        description="Write every packed object and every small loose object of the local store "
        "into one new pack, compressing canonical objects (e.g. fetched ones) on the way, then "
        "remove the packs and loose files it replaced. Object ids do not change, and nothing is "
        "deleted that the new pack does not hold (`git theta gc` deletes unused objects and "
        "repacks too). See docs/store.md.",
    )
    p.add_argument(
        "--dry-run", "-n", action="store_true", help="report what would be packed; change nothing"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    repo = GitRepo.discover()
    store = repo.store()
    # Exclusive: no add is writing, so no object appears or moves while packs are replaced.
    with exclusive_gc_lock(repo.theta_dir):
        report = repack(store, dry_run=args.dry_run)
    if args.json:
        print_json({**asdict(report), "dry_run": args.dry_run})
        return 0
    if not report.packed_objects:
        print("nothing to repack")
        return 0
    verb = "would pack" if args.dry_run else "packed"
    print(
        f"{verb} {report.packed_objects} objects into one pack "
        f"({human_bytes(report.bytes_before)} -> {human_bytes(report.bytes_after)}); "
        f"replaced {report.packs_removed} packs and {report.loose_removed} loose objects"
    )
    return 0
