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
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pygit2

from .history import tree_manifests
from .manifest import Manifest
from .metrics import Metric, collect_metrics, default_direction, is_number
from .promisor import fetch_missing
from .raw_versions import VersionReader
from .repo_files import read_tree_file
from .revisions import PathNotTrackedError, Pathspec, RevisionRange
from .stats import Statistician
from .tensor_diff import ManifestDiff, diff_manifests, is_optimizer_state, new_bytes
from .units import json_number

__all__ = [
    "LOG_SCHEMA",
    "LogEntry",
    "ModelChange",
    "walk_model_changes",
    "theta_log",
    "best_entry",
    "log_to_json",
    "rank_metric_columns",
    "looks_like_metric",
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
    # When several revisions were given: those its commit is reachable from, in the order given.
    sources: tuple[str, ...] = ()

    @property
    def source(self) -> str | None:
        """The revision the row is shown under: the first one its commit is reachable from."""
        return self.sources[0] if self.sources else None

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
    """Manifests by blob id, each read once per walk; raw and git-lfs versions of
    tracked files are read as manifests too (see :mod:`.raw_versions`).
    """

    def __init__(self, git: pygit2.Repository) -> None:
        self._versions = VersionReader(git)

    def __call__(
        self, blob_id: pygit2.Oid | None, path: str, commit: pygit2.Commit
    ) -> Manifest | None:
        if blob_id is None:
            return None
        return self._versions.manifest(blob_id, path, where=str(commit.id)[:7])


def _changed_blobs(
    git: pygit2.Repository, parent: pygit2.Commit | None, commit: pygit2.Commit
) -> dict[str, tuple[pygit2.Oid | None, pygit2.Oid | None]]:
    """Path → (blob in parent, blob in commit) for every path that differs; None where absent."""
    diff = (
        # pygit2 diffs two trees, but its stubs' overloads of diff() leave trees out.
        git.diff(parent.tree, commit.tree)  # type: ignore[call-overload]
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
    if not revisions.include or max_count == 0:
        return  # e.g. --branches=<pattern> that matched no branch
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
    # With -n, the first batch is no larger than what is shown, so -n reads only that.
    for commit, per_parent in _changes_prefetched(git, walker, max_count or _PREFETCH_COMMITS):
        parents = list(commit.parents)
        shown = False
        for path in sorted(per_parent[0]):
            if not all(path in changed for changed in per_parent):
                continue
            new = read(per_parent[0][path][1], path, commit)
            olds = [read(c[path][0], path, p) for c, p in zip(per_parent, parents, strict=False)]
            if new is None and not any(olds):
                continue  # not a model file
            if seen_model_paths is not None:
                seen_model_paths.add(path)
            if pathspec.match(path):
                shown = True
                yield ModelChange(commit, path, new, olds)
        commits += shown
        if max_count is not None and commits >= max_count:
            return  # before the next commit is read


Changes = list[dict[str, tuple[pygit2.Oid | None, pygit2.Oid | None]]]

# Commits whose changed blobs a partial clone fetches in one batch.
_PREFETCH_COMMITS = 256


def _changes_prefetched(
    git: pygit2.Repository, walker: Iterable[pygit2.Commit], first_batch: int
) -> Iterator[tuple[pygit2.Commit, Changes]]:
    """Each commit with its changes against each parent (or the empty tree).

    The blobs the walk will read are made local a batch of commits at a time:
    in a partial clone they may be absent, and never "not a manifest".
    Batches start at ``first_batch`` commits and double up to ``_PREFETCH_COMMITS``.
    """
    chunk: list[tuple[pygit2.Commit, Changes]] = []
    batch = min(first_batch, _PREFETCH_COMMITS)

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
        if len(chunk) >= batch:
            yield from flush()
            batch = min(2 * batch, _PREFETCH_COMMITS)
    yield from flush()


class _Sources:
    """Which of several named revisions a commit is reachable from, in the order given;
    a row is shown under the first (as ``git log --source`` names a ref).

    Asked only for the commits shown, so ``-n`` stays cheap.
    """

    def __init__(self, git: pygit2.Repository, revisions: RevisionRange) -> None:
        self.git = git
        self.tips: dict[str, pygit2.Oid] = {}
        for name, commit in zip(revisions.names, revisions.include, strict=True):
            self.tips.setdefault(name, commit.id)
        self._cache: dict[pygit2.Oid, tuple[str, ...]] = {}

    def __call__(self, commit: pygit2.Commit) -> tuple[str, ...]:
        if commit.id not in self._cache:
            self._cache[commit.id] = tuple(
                name
                for name, tip in self.tips.items()
                if tip == commit.id or self.git.descendant_of(tip, commit.id)
            )
        return self._cache[commit.id]


def several_sources(revisions: RevisionRange) -> bool:
    """Whether the rows should name their revision: more than one distinct tip was given."""
    return len({commit.id for commit in revisions.include}) > 1


def _read_from(git: pygit2.Repository, commit: pygit2.Commit) -> Callable[[str], bytes | None]:
    def read(path: str) -> bytes | None:
        # Never through a committed symlink, regular blobs of at most 1 MiB (repo_files).
        return read_tree_file(git, commit.tree, path)

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
    source = _Sources(git, revisions) if several_sources(revisions) else None
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
                sources=source(change.commit) if source is not None else (),
            )
        )
    if pathspec and revisions.include:
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


# Name parts that say "this is a metric", by how much a reader wants to see it first:
# held-out results, then training results, then where in training, then the learning rate.
_METRIC_TIERS = (
    re.compile(r"(val|valid|validation|eval|test)(_.*)?$|.*_(val|eval|test)$"),
    re.compile(r"(train.*|loss|acc|accuracy|f1|ppl|perplexity|bleu|rouge\w*|score|.*_(loss|acc))$"),
    re.compile(r"(epoch|step|global_step)$"),
    re.compile(r"(lr|learning_rate)$"),
)
# Key path components of learning-rate schedulers' state (Lightning, 🤗's scheduler.pt).
_SCHEDULER_KEYS = frozenset({"lr_schedulers", "lr_scheduler", "scheduler", "schedulers"})


# Timings and counters that trainers log beside their metrics (🤗's eval_runtime).
_BOOKKEEPING = re.compile(r".*(runtime|per_second|flos)$")


def _metric_tier(name: str) -> int | None:
    """How metric-like ``name`` looks (0 is most), from its dotted parts; None: not at all."""
    parts = [part for part in re.split(r"[./]", name.lower()) if part]
    if any(_BOOKKEEPING.match(part) for part in parts):
        return None
    for tier, pattern in enumerate(_METRIC_TIERS):
        if any(pattern.match(part) for part in parts):
            return tier
    return None


def looks_like_metric(name: str) -> bool:
    """``val.acc``, ``train_loss``, ``eval.f1``, ``epoch``, ``lr``; not ``config.use_amp``."""
    return _metric_tier(name) is not None


def _is_training_setting(name: str, paths: set[str]) -> bool:
    """An optimizer's or scheduler's hyperparameter (``optimizer.param_groups.0.lr``)."""
    components = set(name.split("."))
    return not _SCHEDULER_KEYS.isdisjoint(components) or any(
        is_optimizer_state(name, path) or PurePosixPath(path).stem == "scheduler" for path in paths
    )


def _is_integer_list_item(name: str, entries: list[LogEntry]) -> bool:
    """An item of a list of integers, such as an optimizer's parameter ids: never a metric."""
    if not name.rsplit(".", 1)[-1].isdigit():
        return False
    values = [entry.metrics[name] for entry in entries if name in entry.metrics]
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def rank_metric_columns(entries: list[LogEntry]) -> list[str]:
    """The metrics worth a column, most wanted first.

    Metrics whose value changes across the rows come first, then names that
    look like metrics (see :func:`looks_like_metric`). Optimizer and
    scheduler hyperparameters appear only when they change (a learning-rate
    schedule); integer list items never. With one row, the metric-like names.
    """
    paths: dict[str, set[str]] = {}
    for entry in entries:
        for name in entry.metrics:
            paths.setdefault(name, set()).add(entry.path)
    ranked = []
    for name, where in paths.items():
        if _is_integer_list_item(name, entries):
            continue
        # Over the rows that have it: a second model file without it is no change.
        changes = len({repr(e.metrics[name]) for e in entries if name in e.metrics}) > 1
        tier = _metric_tier(name)
        setting = _is_training_setting(name, where)
        if (setting and not changes) or (not changes and tier is None):
            continue
        unlike = tier is None
        ranked.append(((not changes, unlike, setting, tier if tier is not None else 9, name), name))
    return [name for _, name in sorted(ranked)]


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
        "branch": entry.source,
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
