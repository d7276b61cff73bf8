"""One filter process's session: the :class:`ThetaFilter` git talks to, made on the first request.

git waits for the handshake before it sends anything, and starts the filter
process for every add, status and checkout, often only to clean one small
file. So this module imports nothing heavy: the repository, the store, the
format parsers and the remotes are set up when the first request arrives
(``tests/unit/test_filter_protocol.py`` holds the list of modules that must
stay out until then), and the remotes only for the first smudge.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .filter import ThetaFilter
    from .formats.source import Readable
    from .gitrepo import GitRepo
    from .smudge import SmudgePlan

__all__ = ["FilterOnFirstRequest", "start_filter", "install_missing_hooks"]


class FilterOnFirstRequest:
    """The :class:`filter_protocol.FilterHandler` of a filter process: a :class:`ThetaFilter`
    made when the first request arrives, whose resources (the writer lock) ``resources``
    holds until the process ends."""

    def __init__(self, resources: contextlib.ExitStack) -> None:
        self._resources = resources
        self._filter: ThetaFilter | None = None

    def _started(self) -> ThetaFilter:
        if self._filter is None:
            self._filter = start_filter(self._resources)
        return self._filter

    def clean(self, pathname: str, content: Readable) -> bytes:
        return self._started().clean(pathname, content)

    def prepare_smudge(
        self, pathname: str, content: Readable, treeish: str | None = None
    ) -> SmudgePlan:
        theta = self._started()
        if theta.fetcher is None:
            # Only a smudge fetches what the store lacks; an add never loads the remotes.
            from .on_demand import OnDemandFetcher

            theta.fetcher = OnDemandFetcher(theta.repo)
        return theta.prepare_smudge(pathname, content, treeish)


def start_filter(resources: contextlib.ExitStack) -> ThetaFilter:
    """Find the repository and take the writer lock; its hooks are checked before the
    first request the clean cache does not answer."""
    from .filter import ThetaFilter
    from .gitrepo import GitRepo
    from .locks import writer_lock

    # numpy's OpenBLAS starts a thread per core when numpy is imported, which spin
    # for a while: CPU taken from the codec's workers. Nothing here calls BLAS, and
    # this process starts only git's own programs.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    repo = GitRepo.discover()
    # Held for the rest of the process: `git theta gc` waits for us, so objects
    # written by an add in progress are never pruned before the index names them.
    resources.enter_context(writer_lock(repo.theta_dir))
    skip_smudge = os.environ.get("GIT_THETA_SKIP_SMUDGE") == "1"
    return ThetaFilter(repo, skip_smudge, before_work=lambda: _before_work(repo))


def _before_work(repo: GitRepo) -> None:
    """What the first clean the cache does not answer, or the first smudge, needs first."""
    from .store.codec import tune_allocator

    tune_allocator()  # this process is ours: see tune_allocator
    install_missing_hooks(repo)


def install_missing_hooks(repo: GitRepo) -> None:
    """As git-lfs does: any repository the filter works in gets the hooks, so a fresh
    clone pushes its tensors with no extra step. (Costs two git processes and the
    hooks module: skipped for a clean the cache answers, which follows one that ran it.)"""
    from .hooks import hooks_installed, install_hooks

    if repo.worktree is not None and not hooks_installed(repo):
        for line in install_hooks(repo):
            print(f"git-theta: {line}", file=sys.stderr)
