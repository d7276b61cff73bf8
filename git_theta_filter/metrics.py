"""Metrics: the scalars of a model version, from its checkpoint and from metrics files.

Sources, for a model file ``<path>`` in some version of the repository:

1. the checkpoint's scalar leaves, from the manifest's ``metric`` lines (no
   tensor is read);
2. ``<path>.metrics.json`` beside it, if that version has one;
3. every metrics file declared in the committed ``.thetaconfig`` (git-config
   syntax, written by ``git theta metrics add``)::

       [metrics]
           file = eval/results.json
           file = train/summary.yaml

   Declared files apply to every model file. JSON is always read; ``.toml``
   with the standard library; ``.yaml``/``.yml`` when PyYAML is installed.

Metrics files and ``.thetaconfig`` are written by whoever made the commit
(docs/security.md, class 3): they are read as regular files inside the
repository only, never through a symlink, at most 1 MiB (:mod:`repo_files`),
and parsed within the budget of :mod:`metrics_files`. A file refused or
unreadable is a warning, and its metrics are skipped.

Keys are flattened with dots (``{"eval": {"acc": 0.9}}`` → ``eval.acc``);
list items are numbered, except in lists longer than the manifest's limit
(those are ids, not metrics). Only numbers and booleans are metrics, and no
integer beyond ±2**63 (as clean records a checkpoint's scalars). When two
sources give the same name, the later one in the order above wins.

A name given by a user may be any dotted suffix of a full name (``acc`` for
``eval.acc``) as long as it matches exactly one name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

import pygit2

from .committed_config import THETACONFIG, CommittedConfig, parse_config, read_committed_config
from .errors import ThetaError
from .gitrepo import GitRepo, run_git
from .metrics_files import Metric, MetricsFileError, flatten, parse_metrics_file
from .repo_files import UnsafeRepositoryFileError, read_worktree_file, repository_path_parts

__all__ = [
    "Metric",
    "THETACONFIG",
    "CONVENTION_SUFFIX",
    "MetricsFileError",
    "UnknownMetricError",
    "AmbiguousMetricError",
    "flatten",
    "parse_metrics_file",
    "declared_metrics_files",
    "add_metrics_file",
    "collect_metrics",
    "resolve_metric",
    "default_direction",
    "is_number",
]

CONVENTION_SUFFIX = ".metrics.json"
_CONFIG_KEY = "metrics.file"
# Metrics that get better as they go down; every other metric is maximised by default.
_LOWER_IS_BETTER = re.compile(
    r"loss|err|perplexity|ppl|mse|mae|rmse|nll|wer|cer|fid|distance|time|latency", re.I
)


class UnknownMetricError(ThetaError):
    def __init__(self, name: str, known: Iterable[str]) -> None:
        names = sorted(known)
        listing = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "none"
        super().__init__(f"no metric named {name!r} in these commits (metrics: {listing})")
        self.name = name


class AmbiguousMetricError(ThetaError):
    def __init__(self, name: str, candidates: Iterable[str]) -> None:
        super().__init__(
            f"metric name {name!r} is ambiguous: {', '.join(sorted(candidates))}",
            hint="give more of the dotted name",
        )
        self.name = name


def declared_metrics_files(repo: GitRepo, git: pygit2.Repository) -> list[str]:
    """The metrics files named in ``.thetaconfig``: the work tree's, else the index's, else HEAD's.

    Read through :mod:`committed_config` (no symlink, no ``[include]``, 1 MiB at most).
    """
    config = read_committed_config(repo, THETACONFIG, git=git)
    return config.get_all(_CONFIG_KEY) if config is not None else []


def add_metrics_file(repo: GitRepo, path: str) -> bool:
    """Declare a metrics file (repository-relative) in ``.thetaconfig``; False if it already was.

    git config would write through a symlink: a committed ``.thetaconfig`` that
    is one (or anything but a regular file) is refused instead of followed.
    """
    worktree = repo.require_worktree("git theta metrics add")
    repository_path_parts(path)
    current = read_worktree_file(worktree, THETACONFIG)  # refuses a symlink or a device
    if current is not None and path in CommittedConfig(
        THETACONFIG, "the work tree", parse_config(repo, current)
    ).get_all(_CONFIG_KEY):
        return False
    run_git(
        ["config", f"--file={worktree / THETACONFIG}", "--add"],
        operands=[_CONFIG_KEY, path],
        cwd=worktree,
    )
    return True


ReadFile = Callable[[str], bytes | None]
Warn = Callable[[str], None]


def collect_metrics(
    model_path: str,
    checkpoint_scalars: dict[str, Metric],
    read_file: ReadFile,
    declared: Iterable[str],
    warn: Warn,
) -> dict[str, Metric]:
    """All metrics of one version of a model file;
    unreadable metrics files are warned about and skipped.
    """
    metrics = dict(checkpoint_scalars)
    paths = [model_path + CONVENTION_SUFFIX, *declared]
    # Each file once, where it is named last (the later source wins): a 1 MiB .thetaconfig
    # can name one 1 MiB file 80,000 times, hours of parsing for every version read.
    for path in reversed(dict.fromkeys(reversed(paths))):
        try:
            data = read_file(path)
            if data is not None:
                metrics.update(parse_metrics_file(path, data))
        except UnsafeRepositoryFileError as exc:
            warn(f"metrics file {exc.path}: {exc.reason}; skipped")
        except OSError as exc:
            warn(f"metrics file {path}: {exc.strerror or exc}; skipped")
        except MetricsFileError as exc:
            warn(str(exc))
    return metrics


def resolve_metric(name: str, known: Iterable[str]) -> str:
    """The one full name that ``name`` is, or is a dotted suffix of."""
    names = set(known)
    if name in names:
        return name
    candidates = {n for n in names if n.endswith("." + name)}
    if len(candidates) == 1:
        return candidates.pop()
    if candidates:
        raise AmbiguousMetricError(name, candidates)
    raise UnknownMetricError(name, names)


def default_direction(name: str) -> str:
    """``min`` for names that look like losses or errors, else ``max``."""
    return "min" if _LOWER_IS_BETTER.search(name.rsplit(".", 1)[-1]) else "max"


def is_number(value: Metric | None) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not (isinstance(value, float) and math.isnan(value))
    )
