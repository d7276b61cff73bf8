"""``git theta-diff``: which tensors and metrics changed between two versions of the repository.

The sides follow ``git diff``:

=========================  ===================  ===============
arguments                  old side             new side
=========================  ===================  ===============
(none)                     index                working tree
``--cached [<commit>]``    commit (HEAD)        index
``<commit>``               commit               working tree
``<a> <b>``, ``<a>..<b>``  a                    b
``<a>...<b>``              merge base of a, b   b
=========================  ===================  ===============

The JSON form of the result is specified in docs/json-schema.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pygit2

from .errors import ThetaError
from .gitrepo import GitRepo
from .metrics import Metric, collect_metrics
from .revisions import BadRevisionError, Pathspec, range_sides, resolve_commit
from .snapshots import ModelVersion, Snapshot, index_snapshot, tree_snapshot, worktree_snapshot
from .stats import Statistician
from .tensor_diff import (
    ManifestDiff,
    MetricChange,
    TensorDiff,
    TensorFilter,
    diff_manifests,
    diff_metrics,
    new_bytes,
)
from .units import json_number

__all__ = [
    "DIFF_SCHEMA",
    "TooManyRevisionsError",
    "FileDiff",
    "ThetaDiff",
    "resolve_sides",
    "diff_snapshots",
    "diff_to_json",
]

DIFF_SCHEMA = "git-theta-diff/1"
USAGE = "git theta-diff [<options>] [--cached] [<commit> [<commit>]] [--] [<path>...]"

Warn = Callable[[str], None]


class TooManyRevisionsError(ThetaError):
    """More revisions than a diff has sides: a usage error, as in git."""

    exit_code = 2

    def __init__(self, revisions: list[str], cached: bool) -> None:
        most = "one revision with --cached" if cached else "two revisions"
        super().__init__(
            f"a diff compares two versions: at most {most}, not {len(revisions)} "
            f"({' '.join(revisions)})",
            hint=f"usage: {USAGE}",
        )
        self.revisions = revisions


@dataclass
class FileDiff:
    path: str
    status: str  # modified | added | removed
    changes: ManifestDiff
    metrics: list[MetricChange]
    new_bytes: int  # see docs/store.md, "Sizes"
    old_size: int | None
    new_size: int | None


@dataclass
class ThetaDiff:
    old: Snapshot
    new: Snapshot
    files: list[FileDiff] = field(default_factory=list)

    @property
    def missing_objects(self) -> int:
        return sum(f.changes.summary.missing_objects for f in self.files)


def resolve_sides(
    repo: GitRepo, git: pygit2.Repository, revisions: list[str], cached: bool
) -> tuple[Snapshot, Snapshot]:
    """The two snapshots that ``git diff``'s revision arguments name (see the module docstring)."""
    if len(revisions) > (1 if cached else 2):
        raise TooManyRevisionsError(revisions, cached)
    if len(revisions) == 1 and (sides := range_sides(revisions[0])) is not None:
        left, right = resolve_commit(git, sides[0]), resolve_commit(git, sides[1])
        if sides[2]:
            base = git.merge_base(left.id, right.id)
            if base is None:
                raise BadRevisionError(revisions[0])
            return tree_snapshot(git, git[base].peel(pygit2.Commit), "merge base"), tree_snapshot(
                git, right, sides[1]
            )
        return tree_snapshot(git, left, sides[0]), tree_snapshot(git, right, sides[1])
    if len(revisions) == 2:
        return (
            tree_snapshot(git, resolve_commit(git, revisions[0]), revisions[0]),
            tree_snapshot(git, resolve_commit(git, revisions[1]), revisions[1]),
        )
    if cached:
        if not revisions and git.head_is_unborn:
            # Before the first commit, as in git, the index is compared with nothing.
            return Snapshot("no commits yet", git, {}), index_snapshot(git)
        revision = revisions[0] if revisions else "HEAD"
        return tree_snapshot(git, resolve_commit(git, revision), revision), index_snapshot(git)
    if revisions:
        old = tree_snapshot(git, resolve_commit(git, revisions[0]), revisions[0])
        return old, worktree_snapshot(repo, git)
    return index_snapshot(git), worktree_snapshot(repo, git)


def _metrics_of(
    version: ModelVersion | None, snapshot: Snapshot, declared: list[str], warn: Warn
) -> dict[str, Metric]:
    if version is None:
        return {}
    return collect_metrics(
        version.path, version.manifest.metrics, snapshot.read_file, declared, warn
    )


def diff_snapshots(
    store_stats: Statistician,
    old: Snapshot,
    new: Snapshot,
    pathspec: Pathspec,
    declared_metrics: list[str],
    all_metrics: bool,
    warn: Warn,
    select: TensorFilter | None = None,
) -> ThetaDiff:
    """Compare every model file that differs between two snapshots (and matches ``pathspec``);
    with ``select``, only the tensors it accepts (see :func:`.tensor_diff.diff_manifests`).
    """
    old_files, new_files = old.model_files(), new.model_files()
    pathspec.check_tracked(old_files.keys() | new_files.keys())
    result = ThetaDiff(old, new)
    stored_before = {oid for version in old_files.values() for oid in version.manifest.object_ids()}
    for path in sorted(old_files.keys() | new_files.keys()):
        before, after = old_files.get(path), new_files.get(path)
        if not pathspec.match(path) or (before and after and before.blob_id == after.blob_id):
            continue
        changes = diff_manifests(
            before.manifest if before else None,
            after.manifest if after else None,
            store_stats,
            select,
            path,
        )
        new_oids: set[str] = set()
        if after is not None:
            new_oids = after.manifest.object_ids() - stored_before
            stored_before |= new_oids  # an object new to two files is stored once
        metrics = diff_metrics(
            _metrics_of(before, old, declared_metrics, warn),
            _metrics_of(after, new, declared_metrics, warn),
            all_metrics,
        )
        result.files.append(
            FileDiff(
                path=path,
                status="added" if before is None else "removed" if after is None else "modified",
                changes=changes,
                metrics=metrics,
                new_bytes=new_bytes(after.manifest, new_oids) if after else 0,
                old_size=before.manifest.size if before else None,
                new_size=after.manifest.size if after else None,
            )
        )
    return result


def _side_json(snapshot: Snapshot) -> dict[str, Any]:
    return {"label": snapshot.label, "commit": str(snapshot.commit.id) if snapshot.commit else None}


def tensor_to_json(tensor: TensorDiff) -> dict[str, Any]:
    old, new = tensor.old, tensor.new
    old_stats, new_stats = tensor.old_stats, tensor.new_stats
    return {
        "name": tensor.name,
        "status": tensor.status.value,
        "old_dtype": old.dtype if old else None,
        "new_dtype": new.dtype if new else None,
        "old_shape": list(old.shape) if old else None,
        "new_shape": list(new.shape) if new else None,
        "old_norm": json_number(old_stats.norm) if old_stats else None,
        "new_norm": json_number(new_stats.norm) if new_stats else None,
        "delta_norm": json_number(tensor.delta_norm),
        "relative_change": json_number(tensor.relative_change),
        "cosine_similarity": json_number(tensor.cosine_similarity),
        "group": tensor.group.value,
        "max_abs_delta": json_number(tensor.delta.max_abs_delta) if tensor.delta else None,
        "changed_fraction": json_number(tensor.changed_fraction),
        "old_nan_count": old_stats.nan_count if old_stats else None,
        "old_inf_count": old_stats.inf_count if old_stats else None,
        "new_nan_count": new_stats.nan_count if new_stats else None,
        "new_inf_count": new_stats.inf_count if new_stats else None,
    }


def metric_to_json(change: MetricChange) -> dict[str, Any]:
    return {
        "name": change.name,
        "old": json_number(change.old),
        "new": json_number(change.new),
        "change": json_number(change.change),
    }


def diff_to_json(
    diff: ThetaDiff, tensors: Callable[[FileDiff], list[TensorDiff]]
) -> dict[str, Any]:
    """The documented JSON form; ``tensors`` picks and orders each file's tensors."""
    files = []
    for file in diff.files:
        summary = file.changes.summary
        files.append(
            {
                "path": file.path,
                "status": file.status,
                "old_size": file.old_size,
                "new_size": file.new_size,
                "tensors": [tensor_to_json(t) for t in tensors(file)],
                "summary": {
                    "tensors_modified": summary.modified,
                    "tensors_added": summary.added,
                    "tensors_removed": summary.removed,
                    "tensors_retyped": summary.retyped,
                    "tensors_unchanged": summary.unchanged,
                    "old_norm": json_number(summary.old_norm),
                    "new_norm": json_number(summary.new_norm),
                    "delta_norm": json_number(summary.delta_norm),
                    "relative_change": json_number(summary.relative_change),
                    "theta_tensors": summary.theta_tensors,
                    "theta_tensors_changed": summary.theta_changed,
                    "optimizer_tensors": summary.optimizer_tensors,
                    "optimizer_tensors_changed": summary.optimizer_changed,
                    "optimizer_delta_norm": json_number(summary.optimizer_delta_norm),
                    "new_storage_bytes": file.new_bytes,
                    "missing_objects": summary.missing_objects,
                },
                "metrics": [metric_to_json(m) for m in file.metrics],
            }
        )
    return {
        "schema": DIFF_SCHEMA,
        "old": _side_json(diff.old),
        "new": _side_json(diff.new),
        "files": files,
    }
