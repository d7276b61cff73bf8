"""``git theta filter-process``: the long-running filter git starts (filter.theta.process).

A shell over :mod:`git_theta_filter.filter` (what clean and smudge do) and
:mod:`git_theta_filter.filter_protocol` (git's protocol).

git waits for the handshake before it sends anything, and starts this
process for every add, status and checkout, often only to clean one small
file. So nothing but the protocol is imported before the handshake is
answered: the repository, the store, the format parsers and the remotes are
set up when the first request arrives (``tests/unit/test_filter_protocol.py``
holds the list of modules that must stay out).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING

from ..filter_protocol import serve
from ..pktline import PktLineReader, PktLineWriter, open_stdio_streams
from ._errors import report_error

if TYPE_CHECKING:
    import argparse

    from ..filter import ThetaFilter
    from ..formats.source import Readable
    from ..smudge import SmudgePlan


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "filter-process",
        help="the filter git runs (not for direct use)",
        description="Speak git's long-running filter protocol on stdin/stdout. Git starts this "
        "through filter.theta.process. "
        "Set GIT_THETA_SKIP_SMUDGE=1 to check manifests out as they are.",
    )
    p.set_defaults(run=run)


class _FilterOnFirstRequest:
    """The :class:`filter_protocol.FilterHandler` git talks to: a :class:`ThetaFilter`
    made when the first request arrives, after the handshake."""

    def __init__(self, resources: contextlib.ExitStack) -> None:
        self._resources = resources
        self._filter: ThetaFilter | None = None

    def _started(self) -> ThetaFilter:
        if self._filter is None:
            self._filter = _start_filter(self._resources)
        return self._filter

    def clean(self, pathname: str, content: Readable) -> bytes:
        return self._started().clean(pathname, content)

    def prepare_smudge(
        self, pathname: str, content: Readable, treeish: str | None = None
    ) -> SmudgePlan:
        theta = self._started()
        if theta.fetcher is None:
            # Only a smudge fetches what the store lacks; an add never loads the remotes.
            from ..on_demand import OnDemandFetcher

            theta.fetcher = OnDemandFetcher(theta.repo)
        return theta.prepare_smudge(pathname, content, treeish)


def _start_filter(resources: contextlib.ExitStack) -> ThetaFilter:
    """Find the repository, install its hooks if need be, and take the writer lock."""
    from ..filter import ThetaFilter
    from ..gitrepo import GitRepo
    from ..hooks import hooks_installed, install_hooks
    from ..locks import writer_lock

    repo = GitRepo.discover()
    if repo.worktree is not None and not hooks_installed(repo):
        # As git-lfs does: any repository the filter runs in gets the hooks,
        # so a fresh clone pushes its tensors with no extra step.
        for line in install_hooks(repo):
            print(f"git-theta: {line}", file=sys.stderr)
    # Held for the rest of the process: `git theta gc` waits for us, so objects
    # written by an add in progress are never pruned before the index names them.
    resources.enter_context(writer_lock(repo.theta_dir))
    skip_smudge = os.environ.get("GIT_THETA_SKIP_SMUDGE") == "1"
    return ThetaFilter(repo, skip_smudge)


def run(args: argparse.Namespace | None) -> int:
    stdin, stdout = open_stdio_streams()
    with contextlib.ExitStack() as resources:
        handler = _FilterOnFirstRequest(resources)
        serve(PktLineReader(stdin), PktLineWriter(stdout), handler, report_error)
    return 0
