"""``git theta commit``: stage model files in this process and commit, without git's refresh."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..gitrepo import GitRepo
from ._output import print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "commit",
        help="stage model files and commit them, with one process",
        description="Clean each <path> into the store and stage it, as `git add` does, then commit "
        "the index, as `git commit -m` does, but in this one process: `git add` + `git commit` "
        "start the filter twice for a file saved in the same second (git's racy-clean check). "
        "For committing every training step from a shell loop. Unlike `git commit`, no commit "
        "hooks run and no editor opens; anything already staged is committed too.",
    )
    p.add_argument("-m", "--message", required=True, help="the commit message")
    p.add_argument("paths", nargs="+", metavar="<path>", help="tracked model files to stage")
    p.add_argument("--json", action="store_true", help="print the new commit's id as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import pygit2

    from ..staging import commit_index, stage_file

    repo = GitRepo.discover()
    top = repo.require_worktree("git theta commit").resolve()
    git = pygit2.Repository(str(repo.git_dir))
    for path in args.paths:
        absolute = Path(path).resolve()
        if not absolute.is_relative_to(top):
            print(f"git theta commit: {path} is outside the work tree {top}", file=sys.stderr)
            return 128
        stage_file(repo, git, absolute.relative_to(top).as_posix())
    commit = commit_index(repo, git, args.message)
    if args.json:
        print_json({"commit": commit})
    return 0
