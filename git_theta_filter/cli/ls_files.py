"""``git theta ls-files``: tracked model files in the index."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ..gitrepo import GitRepo
from ..inventory import list_files
from ..units import human_bytes
from ._output import print_json, print_table


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ls-files",
        help="list tracked model files with tensor counts and sizes",
        description="For each model file in the index: its format, tensor count, size, and "
        "new: the payload bytes of the objects its version references that the previous "
        'version on HEAD\'s first-parent line does not (docs/store.md, "Sizes").',
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    entries = list_files(GitRepo.discover())
    if args.json:
        print_json([asdict(e) for e in entries])
        return 0
    rows = [
        (
            e.path,
            e.format,
            e.tensors,
            human_bytes(e.size),
            human_bytes(e.new_bytes),
            f"{e.missing_objects} missing" if e.missing_objects else "",
        )
        for e in entries
    ]
    print_table(("path", "format", "tensors", "size", "new", ""), rows, right=(2, 3, 4))
    return 0
