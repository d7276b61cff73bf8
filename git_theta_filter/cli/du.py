"""``git theta du``: logical size of all model versions against what the store holds."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ..gitrepo import GitRepo
from ..inventory import disk_usage
from ..units import human_bytes
from ._output import print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "du",
        help="logical vs stored bytes, and the dedup ratio",
        description="Logical: the sizes of every model file version reachable from any ref or "
        "the index, added up. Stored: what the local store's files take for the objects those "
        "versions reference, each object once. Store: every object in the local store, "
        'referenced or not (docs/store.md, "Sizes").',
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    usage = disk_usage(GitRepo.discover())
    if args.json:
        print_json({**asdict(usage), "dedup_ratio": usage.dedup_ratio})
        return 0
    print(
        f"logical  {human_bytes(usage.logical_bytes):>10}  in {usage.file_versions} file versions"
    )
    missing = f" ({usage.missing_objects} not in the local store)" if usage.missing_objects else ""
    print(
        f"stored   {human_bytes(usage.referenced_bytes):>10}  in {usage.referenced_objects} "
        f"objects{missing}"
    )
    print(f"dedup    {usage.dedup_ratio:>9.2f}x")
    unreferenced = usage.store_objects - (usage.referenced_objects - usage.missing_objects)
    print(
        f"store    {human_bytes(usage.store_bytes):>10}  in {usage.store_objects} objects "
        f"({unreferenced} unreferenced)"
    )
    return 0
