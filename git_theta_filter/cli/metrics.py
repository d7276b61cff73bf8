"""``git theta metrics``: declare the metrics files that theta-log and theta-diff read.

The declarations go to ``.thetaconfig`` at the top of the working tree, in
git-config syntax, to be committed with the repository. ``<model>.metrics.json``
beside a model file is read without being declared.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ThetaError
from ..gitrepo import GitRepo
from ..history import open_pygit2
from ..metrics import CONVENTION_SUFFIX, THETACONFIG, add_metrics_file, declared_metrics_files


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "metrics",
        help="declare metrics files for theta-log and theta-diff",
        description=f"Metrics files (JSON; TOML; YAML with PyYAML) declared in {THETACONFIG} are "
        "read by `git theta-log` and `git theta-diff` for every model file; "
        f"`<model>{CONVENTION_SUFFIX}` beside a model file is read without being declared.",
    )
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    add = actions.add_parser("add", help=f"declare a metrics file in {THETACONFIG}")
    add.add_argument("file", help="path of the metrics file (relative to the current directory)")
    actions.add_parser("list", help="list the declared metrics files")
    parser.set_defaults(run=run)


def _repository_path(worktree: Path, argument: str) -> str:
    relative = os.path.relpath(os.path.abspath(argument), worktree)
    if relative == ".." or relative.startswith(".." + os.sep):
        raise ThetaError(f"{argument}: outside the repository at {worktree}")
    return Path(relative).as_posix()


def run(args: argparse.Namespace) -> int:
    repo = GitRepo.discover()
    if args.action == "list":
        for path in declared_metrics_files(repo, open_pygit2(repo)):
            print(path)
        return 0
    path = _repository_path(repo.require_worktree("git theta metrics add"), args.file)
    if add_metrics_file(repo, path):
        print(f"declared {path} in {THETACONFIG}; commit it: git add {THETACONFIG} && git commit")
    else:
        print(f"{path} is already declared in {THETACONFIG}")
    return 0
