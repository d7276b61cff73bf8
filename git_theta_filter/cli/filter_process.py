"""``git theta filter-process``: the long-running filter git starts (filter.theta.process)."""

from __future__ import annotations

import argparse
import os
import sys

from ..clean import clean
from ..filter_protocol import serve
from ..gitrepo import GitRepo, git_process
from ..hooks import hooks_installed, install_hooks
from ..locks import writer_lock
from ..manifest import Manifest, ManifestError, looks_like_manifest
from ..on_demand import OnDemandFetcher
from ..pktline import PktLineReader, PktLineWriter, open_stdio_streams
from ..smudge import SmudgePlan, prepare_smudge, read_smudge_input
from ..store.local import LocalStore, ObjectMissingError
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


class ThetaFilter:
    """Clean and smudge against one repository's store."""

    def __init__(
        self, store: LocalStore, skip_smudge: bool, fetcher: OnDemandFetcher | None = None
    ) -> None:
        self.store = store
        self.skip_smudge = skip_smudge
        self.fetcher = fetcher

    def clean(self, pathname: str, content: PktLineReader) -> bytes:
        # A new version of a model mostly repeats the staged one's tensors;
        # comparing with those costs far less than hashing and writing them.
        with self.store.expecting(_staged_payload_objects(pathname)):
            return clean(content, self.store, pathname)

    def prepare_smudge(self, pathname: str, reader: PktLineReader) -> SmudgePlan:
        content = read_smudge_input(reader, pathname)
        if self.skip_smudge:
            return SmudgePlan(pathname, self.store, None, passthrough=content)
        try:
            return prepare_smudge(content, self.store, pathname)
        except ObjectMissingError:
            if self.fetcher is None:
                raise
            # Every object this file lacks comes down in one batch; if the store
            # lacks one too, the retry raises the same error as before.
            self.fetcher.fetch_missing(content)
            return prepare_smudge(content, self.store, pathname)


# Asking git for the staged version costs a process (a few ms); below this
# size hashing and writing the file costs less than that.
_LOOK_UP_STAGED_FROM = 8 << 20


def _staged_payload_objects(pathname: str) -> list[str]:
    """The payload objects of the index's version of ``pathname``, in file order; [] if it has none.

    Git runs the filter at the top of the work tree, where the work-tree file
    tells the size to expect and ``:<path>`` names the index entry.
    """
    try:
        if os.path.getsize(pathname) < _LOOK_UP_STAGED_FROM:
            return []
    except OSError:
        return []
    staged = git_process(["cat-file", "blob", f":{pathname}"])
    if staged.returncode != 0 or not looks_like_manifest(staged.stdout):
        return []
    try:
        return [splice.oid for splice in Manifest.parse(staged.stdout).splices]
    except ManifestError:
        return []


def run(args: argparse.Namespace) -> int:
    repo = GitRepo.discover()
    if repo.worktree is not None and not hooks_installed(repo):
        # As git-lfs does: any repository the filter runs in gets the hooks,
        # so a fresh clone pushes its tensors with no extra step.
        for line in install_hooks(repo):
            print(f"git-theta: {line}", file=sys.stderr)
    stdin, stdout = open_stdio_streams()
    handler = ThetaFilter(
        repo.store(), os.environ.get("GIT_THETA_SKIP_SMUDGE") == "1", OnDemandFetcher(repo)
    )
    # Held for the life of the process: `git theta gc` waits for us, so objects
    # written by an add in progress are never pruned before the index names them.
    with writer_lock(repo.theta_dir):
        serve(PktLineReader(stdin), PktLineWriter(stdout), handler, report_error)
    return 0
