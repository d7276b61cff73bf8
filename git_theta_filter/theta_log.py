"""``git theta-log``: the history of a repository's model files,
one entry per changed file per commit.

Commits are walked with pygit2 (no git process per commit), newest first and
children before parents. A commit changed a model file when the file's
blob differs from the file's blob in *every* parent, which is how git log
decides that a merge touched a path (a merge that took one side's version
unchanged is not listed). Its change is measured against the first parent.

For each entry: the metrics of that version (see :mod:`.metrics`), ‖θ‖ and
‖Δθ‖/‖θ‖ (see :mod:`.tensor_diff`), the number of tensors that changed, and
the payload bytes of objects that the parents' versions of the file did not
have (counted once per commit).
The JSON form is specified in docs/json-schema.md.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pygit2

from .history import read_blob, read_manifest_blob, tree_manifests
from .manifest import Manifest
from .metrics import Metric, collect_metrics, default_direction, is_number
from .promisor import fetch_missing
from .revisions import PathNotTrackedError, Pathspec, RevisionRange
from .stats import Statistician
from .tensor_diff import ManifestDiff, diff_manifests, new_bytes
from .theta_diff import json_number

__all__ = [
    "LOG_SCHEMA",
    "LogEntry",
    "ModelChange",
    "walk_model_changes",
    "theta_log",
    "best_entry",
    "log_to_json",
]

LOG_SCHEMA = "git-theta-log/1"

Warn = Callable[[str], None]


@dataclass(frozen=True)
class ModelChange:
    """A model file that a commit changed: its version there and in each parent."""

    commit: pygit2.Commit
    path: str
    new: Manifest | None
    parents: list[Manifest | None]

    @property
    def old(self) -> Manifest | None:
        return self.parents[0] if self.parents else None


@dataclass
class LogEntry:
    change: ModelChange
    metrics: dict[str, Metric]
    diff: ManifestDiff
    new_bytes: int  # see docs/store.md, "Sizes"
    with_stats: bool

    @property
    def commit(self) -> pygit2.Commit:
        return self.change.commit

    @property
    def path(self) -> str:
        return self.change.path

    @property
    def status(self) -> str:
        return (
            "removed"
            if self.change.new is None
            else "added"
            if self.change.old is None
            else "modified"
        )

    @property
    def timestamp(self) -> datetime.datetime:
        zone = datetime.timezone(datetime.timedelta(minutes=self.commit.commit_time_offset))
        return datetime.datetime.fromtimestamp(self.commit.commit_time, zone)

    @property
    def subject(self) -> str:
        return self.commit.message.split("\n", 1)[0]

    @property
    def norms_available(self) -> bool:
        return self.with_stats and self.diff.summary.missing_objects == 0


class _ManifestReader:
    """Manifests by blob id, each parsed once per walk."""

    def __init__(self, git: pygit2.Repository) -> None:
        self.git = git
        self._cache: dict[pygit2.Oid, Manifest | None] = {}

    def __call__(self, blob_id: pygit2.Oid | None) -> Manifest | None:
        if blob_id is None:
            return None
        if blob_id not in self._cache:
            self._cache[blob_id] = read_manifest_blob(self.git, blob_id)
        return self._cache[blob_id]


def _changed_blobs(
    git: pygit2.Repository, parent: pygit2.Commit | None, commit: pygit2.Commit
) -> dict[str, tuple[pygit2.Oid | None, pygit2.Oid | None]]:
    """Path → (blob in parent, blob in commit) for every path that differs; None where absent."""
    diff = (
        git.diff(parent.tree, commit.tree)
        if parent is not None
        else commit.tree.diff_to_tree(swap=True)
    )
    changed = {}
    for delta in diff.deltas:
        old_id = delta.old_file.id if delta.status != pygit2.enums.DeltaStatus.ADDED else None
        new_id = delta.new_file.id if delta.status != pygit2.enums.DeltaStatus.DELETED else None
        changed[delta.new_file.path or delta.old_file.path] = (old_id, new_id)
    return changed


def walk_model_changes(
    git: pygit2.Repository,
    revisions: RevisionRange,
    pathspec: Pathspec,
    max_count: int | None = None,
    seen_model_paths: set[str] | None = None,
) -> Iterator[ModelChange]:
    """Model files changed by the commits of ``revisions``, newest commit first.

    ``max_count`` limits the number of commits; ``seen_model_paths`` collects
    every model path met, matched by ``pathspec`` or not (to check the pathspec).
    """
    read = _ManifestReader(git)
    # Children before parents even when commit dates tie or skew.
    walker = git.walk(
        revisions.include[0].id, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.TIME
    )
    for commit in revisions.include[1:]:
        walker.push(commit.id)
    for commit in revisions.exclude:
        walker.hide(commit.id)
    commits = 0
    for commit, per_parent in _changes_prefetched(git, walker):
        if max_count is not None and commits >= max_count:
            return
        parents = list(commit.parents)
        shown = False
        for path in sorted(per_parent[0]):
            if not all(path in changed for changed in per_parent):
                continue
            new = read(per_parent[0][path][1])
            olds = [read(changed[path][0]) for changed in per_parent] if parents else []
            if new is None and not any(olds):
                continue  # not a model file
            if seen_model_paths is not None:
                seen_model_paths.add(path)
            if pathspec.match(path):
                shown = True
                yield ModelChange(commit, path, new, olds)
        commits += shown


Changes = list[dict[str, tuple[pygit2.Oid | None, pygit2.Oid | None]]]

# Commits whose changed blobs a partial clone fetches in one batch.
_PREFETCH_COMMITS = 256


def _changes_prefetched(
    git: pygit2.Repository, walker: Iterable[pygit2.Commit]
) -> Iterator[tuple[pygit2.Commit, Changes]]:
    """Each commit with its changes against each parent (or the empty tree).

    The blobs the walk will read are made local a batch of commits at a time:
    in a partial clone they may be absent, and never "not a manifest".
    """
    chunk: list[tuple[pygit2.Commit, Changes]] = []

    def flush() -> Iterator[tuple[pygit2.Commit, Changes]]:
        fetch_missing(
            git,
            (
                blob_id
                for _, per_parent in chunk
                for changed in per_parent
                for pair in changed.values()
                for blob_id in pair
                if blob_id is not None
            ),
        )
        yield from chunk
        chunk.clear()

    for commit in walker:
        parents = list(commit.parents)
        per_parent = [_changed_blobs(git, parent, commit) for parent in parents] or [
            _changed_blobs(git, None, commit)
        ]
        chunk.append((commit, per_parent))
        if len(chunk) == _PREFETCH_COMMITS:
            yield from flush()
    yield from flush()


def _read_from(git: pygit2.Repository, commit: pygit2.Commit) -> Callable[[str], bytes | None]:
    def read(path: str) -> bytes | None:
        try:
            entry = commit.tree[path]
        except KeyError:
            return None
        if entry.type != pygit2.enums.ObjectType.BLOB:
            return None
        return read_blob(git, entry.id)

    return read


def theta_log(
    git: pygit2.Repository,
    revisions: RevisionRange,
    pathspec: Pathspec,
    declared_metrics: list[str],
    warn: Warn,
    stats: Statistician | None = None,
    max_count: int | None = None,
) -> list[LogEntry]:
    """The log entries; without ``stats`` only metrics and counts
    (nothing is read from the store).
    """
    seen: set[str] = set()
    entries = []
    stored_in_commit: dict[pygit2.Oid, set[str]] = {}
    for change in walk_model_changes(git, revisions, pathspec, max_count, seen):
        metrics = {}
        new_oids: set[str] = set()
        if change.new is not None:
            metrics = collect_metrics(
                change.path,
                change.new.metrics,
                _read_from(git, change.commit),
                declared_metrics,
                warn,
            )
            parents_had = {
                oid for parent in change.parents if parent for oid in parent.object_ids()
            }
            already = stored_in_commit.setdefault(change.commit.id, set())
            new_oids = change.new.object_ids() - parents_had - already
            already |= new_oids
        entries.append(
            LogEntry(
                change=change,
                metrics=metrics,
                diff=diff_manifests(change.old, change.new, stats, path=change.path),
                new_bytes=new_bytes(change.new, new_oids) if change.new else 0,
                with_stats=stats is not None,
            )
        )
    if pathspec:
        try:
            pathspec.check_tracked(seen)
        except PathNotTrackedError:
            # Not changed in this range (or beyond -n) is fine for a model file that exists.
            pathspec.check_tracked(seen | _tip_model_paths(git, revisions))
    return entries


def _tip_model_paths(git: pygit2.Repository, revisions: RevisionRange) -> set[str]:
    """Model files in the included commits' trees:
    a path that exists but did not change is no error.
    """
    return {ref.path for commit in revisions.include for ref in tree_manifests(git, commit.tree)}


def best_entry(
    entries: list[LogEntry], metric: str, direction: str | None = None
) -> tuple[LogEntry | None, str]:
    """The entry with the best value of ``metric`` and the direction used (``min``/``max``).

    Entries without a numeric value are skipped; on a tie the oldest commit wins.
    """
    direction = direction or default_direction(metric)
    best: LogEntry | None = None
    for entry in reversed(entries):  # oldest first, so a later equal value does not replace it
        value = entry.metrics.get(metric)
        if not is_number(value):
            continue
        current = best.metrics[metric] if best is not None else None
        if current is None or (value < current if direction == "min" else value > current):  # type: ignore[operator]
            best = entry
    return best, direction


def entry_to_json(entry: LogEntry, metric_names: list[str] | None) -> dict[str, Any]:
    summary = entry.diff.summary
    names = metric_names if metric_names is not None else sorted(entry.metrics)
    return {
        "commit": str(entry.commit.id),
        "short": str(entry.commit.id)[:7],
        "date": entry.timestamp.isoformat(),
        "subject": entry.subject,
        "path": entry.path,
        "status": entry.status,
        "metrics": {name: json_number(entry.metrics.get(name)) for name in names},
        "norm": json_number(summary.new_norm),
        "relative_change": json_number(summary.relative_change),
        "tensors_changed": summary.changed,
        "tensors": len(entry.change.new.tensors) if entry.change.new else 0,
        "theta_tensors_changed": summary.theta_changed,
        "theta_tensors": summary.theta_tensors,
        "new_storage_bytes": entry.new_bytes,
        "non_finite": summary.non_finite > 0 if entry.norms_available else None,
        "norms_available": entry.norms_available,
    }


def log_to_json(entries: list[LogEntry], metric_names: list[str] | None) -> dict[str, Any]:
    return {"schema": LOG_SCHEMA, "entries": [entry_to_json(e, metric_names) for e in entries]}
