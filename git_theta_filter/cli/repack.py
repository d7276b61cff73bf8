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
        "remove the packs and loose files it replaced. Large loose objects in an older form "
        "(canonical, or encoded without block digests) are rewritten in the current one, each "
        "checked before it replaces the old file. Object ids do not change, and nothing is "
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
    if not (report.packed_objects or report.encoded_loose or report.digested):
        print("nothing to repack")
        return 0
    if report.packed_objects:
        verb = "would pack" if args.dry_run else "packed"
        print(
            f"{verb} {_objects(report.packed_objects)} into one pack "
            f"({human_bytes(report.bytes_before)} -> {human_bytes(report.bytes_after)}); "
            f"replaced {report.packs_removed} packs and {_objects(report.loose_removed, 'loose')}"
        )
    if report.encoded_loose:
        verb = "would compress" if args.dry_run else "compressed"
        print(f"{verb} {_objects(report.encoded_loose, 'large loose')} stored canonical")
    if report.digested:
        verb = "would add" if args.dry_run else "added"
        print(
            f"{verb} block digests to {_objects(report.digested)} written before them "
            "(docs/store.md, rule 7)"
        )
    return 0


def _objects(count: int, kind: str = "") -> str:
    """``count`` objects in words: "1 object", "3 loose objects"."""
    noun = "object" if count == 1 else "objects"
    return f"{count} {kind} {noun}" if kind else f"{count} {noun}"
