"""``git theta merge``: the merge driver git runs for files with ``merge=theta``
(merge.theta.driver).

Git's contract (gitattributes(5), "Defining a custom merge driver"): the
driver command is ``git-theta merge %O %A %B %P``. ``%O``, ``%A`` and ``%B``
are temporary files holding the ancestor's, the current branch's and the
other branch's version of the file as git stores them (here: manifests;
``%O`` is empty when both branches added the file), and ``%P`` is the path.
The driver leaves the merged result in ``%A`` and exits 0, or exits non-zero
for a conflict; git then marks the path conflicted and checks out whatever
``%A`` holds. Merges, cherry-picks, reverts and rebases all run it.

Messages go to stderr; the merge itself is :mod:`git_theta_filter.merge`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections import Counter
from pathlib import Path

from ..gitrepo import GitRepo
from ..locks import writer_lock
from ..manifest import Manifest, ManifestError, looks_like_manifest
from ..merge import (
    STRATEGY_CONFIG_KEY,
    STRATEGY_ENVIRONMENT,
    MergeResult,
    Outcome,
    TensorMerge,
    change_norm,
    choose_strategy,
    merge_manifests,
)
from ..on_demand import OnDemandFetcher, incoming_commit
from ..stats import Statistician
from ..store.local import LocalStore, ObjectMissingError
from ._format import format_value
from ._output import print_table

_STRATEGIES = "ours|theirs|base|average|weighted:ALPHA"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "merge",
        help="the merge driver git runs (merge.theta.driver; not for direct use)",
        description="Merge three versions of a model file tensor by tensor. A tensor that one "
        "side changed takes that side's version. A tensor that both sides changed is settled by "
        f"the strategy in {STRATEGY_ENVIRONMENT} or {STRATEGY_CONFIG_KEY} (ours, theirs, base, "
        "average, weighted:ALPHA for (1-ALPHA)*ours + ALPHA*theirs); without one it is a "
        "conflict: the command prints the conflicting tensors, leaves OURS as it is and exits 1. "
        "The merged manifest is written over OURS. See docs/merge.md.",
    )
    p.add_argument(
        "base",
        metavar="BASE",
        help="the common ancestor's version; empty when both sides added the file",
    )
    p.add_argument("ours", metavar="OURS", help="our version; the result is written here")
    p.add_argument("theirs", metavar="THEIRS", help="their version")
    p.add_argument("path", metavar="PATH", help="the file's path in the repository, for messages")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    repo = GitRepo.discover()
    strategy = choose_strategy(
        repo.config_get(STRATEGY_CONFIG_KEY), os.environ.get(STRATEGY_ENVIRONMENT)
    )
    base, ours, theirs = (Path(name).read_bytes() for name in (args.base, args.ours, args.theirs))
    # Remotes that have the commit being merged in are asked first.
    fetcher = OnDemandFetcher(repo, incoming_commit(repo))
    for version in (base, ours, theirs):
        if looks_like_manifest(version):
            with contextlib.suppress(ManifestError):  # the merge reports it
                fetcher.fetch_missing(version)
    store = repo.store()
    # Missing objects are a missing-object error, never a conflict of tensors.
    for version in (ours, theirs):
        missing = _first_missing(store, version)
        if missing is not None:
            raise fetcher.unavailable(ObjectMissingError(missing, args.path))
    # Held while objects are written,
    # so `git theta gc` cannot prune them before git records the result.
    with writer_lock(repo.theta_dir):
        result = merge_manifests(base, ours, theirs, store, strategy, args.path)
    if result.manifest is not None:
        if result.manifest != ours:
            Path(args.ours).write_bytes(result.manifest)
        _print_summary(result)
        return 0
    _print_conflicts(result, Statistician.for_repo(repo.theta_dir))
    return 1


def _first_missing(store: LocalStore, version: bytes) -> str | None:
    """The first object a version needs that the store lacks; None if it has them all or the
    version is not a readable manifest (the merge reports that)."""
    if not looks_like_manifest(version):
        return None
    try:
        needed = Manifest.parse(version).object_ids()
    except ManifestError:
        return None
    return next((oid for oid in sorted(needed) if not store.has(oid)), None)


def _print_summary(result: MergeResult) -> None:
    counts: Counter[Outcome] = Counter(
        t.outcome for t in result.tensors if t.outcome is not Outcome.UNCHANGED
    )
    if not counts:
        return
    words = {
        Outcome.OURS: "from ours",
        Outcome.THEIRS: "from theirs",
        Outcome.SAME: "changed alike on both sides",
        Outcome.BASE: "kept at base",
        Outcome.COMBINED: f"combined ({result.strategy})",
    }
    parts = [f"{counts[outcome]} {word}" for outcome, word in words.items() if counts[outcome]]
    print(
        f"git-theta: merged {result.path} tensor by tensor: {', '.join(parts)}; "
        f"the rest of the file from {result.frame_from}",
        file=sys.stderr,
    )


def _norm_cell(stats: Statistician, tensor: TensorMerge, side: str) -> str:
    entry = tensor.ours if side == "ours" else tensor.theirs
    if entry is None:
        return "removed"
    return format_value(change_norm(stats, tensor.base, entry))


def _print_conflicts(result: MergeResult, stats: Statistician) -> None:
    if result.problem is not None:
        print(
            f"git-theta: {result.path}: cannot merge tensor by tensor: {result.problem}; "
            "ours is left in place",
            file=sys.stderr,
        )
        return
    conflicts = result.conflicts
    count = f"{len(conflicts)} tensor{'s' if len(conflicts) != 1 else ''}"
    print(
        f"git-theta: {result.path}: {count} in conflict (merge strategy: {result.strategy}); "
        "ours is left in place",
        file=sys.stderr,
    )
    rows = []
    for tensor in conflicts:
        shown = tensor.ours or tensor.theirs or tensor.base
        assert shown is not None
        rows.append(
            [
                tensor.name,
                shown.dtype,
                "[" + ",".join(map(str, shown.shape)) + "]",
                _norm_cell(stats, tensor, "ours"),
                _norm_cell(stats, tensor, "theirs"),
                tensor.reason,
            ]
        )
    with contextlib.redirect_stdout(sys.stderr):
        print_table(
            ["  tensor", "dtype", "shape", "‖Δ ours‖", "‖Δ theirs‖", "conflict"],
            _indent(rows),
            right=(3, 4),
        )
    print(
        "git-theta: ‖Δ‖ is each side's change from the base. "
        "To settle every conflicting tensor one way, run\n"
        # Quoted for the shell: the path is the committer's, the command is pasted.
        f"  {STRATEGY_ENVIRONMENT}=average git checkout -m -- {shlex.quote(result.path)}\n"
        f"with one of {_STRATEGIES}, then `git add -- {shlex.quote(result.path)}`.",
        file=sys.stderr,
    )


def _indent(rows: list[list[str]]) -> list[list[str]]:
    return [["  " + row[0], *row[1:]] for row in rows]
