"""``git theta filter-process``: the long-running filter git starts (filter.theta.process).

A shell over :mod:`git_theta_filter.filter` (what clean and smudge do) and
:mod:`git_theta_filter.filter_protocol` (git's protocol).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..filter import ThetaFilter
from ..filter_protocol import serve
from ..gitrepo import GitRepo
from ..hooks import hooks_installed, install_hooks
from ..locks import writer_lock
from ..on_demand import OnDemandFetcher
from ..pktline import PktLineReader, PktLineWriter, open_stdio_streams
from ._errors import report_error


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "filter-process",
        help="the filter git runs (not for direct use)",
        description="Speak git's long-running filter protocol on stdin/stdout. Git starts this "
        "through filter.theta.process. "
        "Set GIT_THETA_SKIP_SMUDGE=1 to check manifests out as they are.",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    repo = GitRepo.discover()
    if repo.worktree is not None and not hooks_installed(repo):
        # As git-lfs does: any repository the filter runs in gets the hooks,
        # so a fresh clone pushes its tensors with no extra step.
        for line in install_hooks(repo):
            print(f"git-theta: {line}", file=sys.stderr)
    stdin, stdout = open_stdio_streams()
    skip_smudge = os.environ.get("GIT_THETA_SKIP_SMUDGE") == "1"
    handler = ThetaFilter(repo, skip_smudge, OnDemandFetcher(repo))
    # Held for the life of the process: `git theta gc` waits for us, so objects
    # written by an add in progress are never pruned before the index names them.
    with writer_lock(repo.theta_dir):
        serve(PktLineReader(stdin), PktLineWriter(stdout), handler, report_error)
    return 0
