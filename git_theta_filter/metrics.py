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

Keys are flattened with dots (``{"eval": {"acc": 0.9}}`` → ``eval.acc``);
list items are numbered, except in lists longer than the manifest's limit
(those are ids, not metrics). Only numbers and booleans are metrics. When two
sources give the same name, the later one in the order above wins.

A name given by a user may be any dotted suffix of a full name (``acc`` for
``eval.acc``) as long as it matches exactly one name.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pygit2

from .errors import ThetaError
from .formats.pickle_scan import MAX_METRIC_SEQUENCE
from .gitrepo import GitRepo, run_git

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

Metric = int | float | bool
THETACONFIG = ".thetaconfig"
CONVENTION_SUFFIX = ".metrics.json"
_CONFIG_KEY = "metrics.file"
# Metrics that get better as they go down; every other metric is maximised by default.
_LOWER_IS_BETTER = re.compile(
    r"loss|err|perplexity|ppl|mse|mae|rmse|nll|wer|cer|fid|distance|time|latency", re.I
)


class MetricsFileError(ThetaError):
    """A metrics file that cannot be read."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"metrics file {path}: {reason}")
        self.path = path
        self.reason = reason


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


def flatten(data: Any, prefix: str = "") -> dict[str, Metric]:
    """Numeric and boolean leaves of nested dicts and lists, keyed by dotted paths."""
    out: dict[str, Metric] = {}
    if isinstance(data, (bool, int, float)):
        if prefix:
            out[prefix] = data
    elif isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, (list, tuple)) and len(data) <= MAX_METRIC_SEQUENCE:
        for index, value in enumerate(data):
            out.update(flatten(value, f"{prefix}.{index}" if prefix else str(index)))
    return out


def parse_metrics_file(path: str, data: bytes) -> dict[str, Metric]:
    """The flattened metrics in a file, read by its extension (JSON when unknown)."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".toml":
            parsed = tomllib.loads(data.decode("utf-8"))
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise MetricsFileError(
                    path, "reading YAML needs PyYAML (pip install pyyaml)"
                ) from None
            parsed = yaml.safe_load(data)
        else:
            parsed = json.loads(data)
    except MetricsFileError:
        raise
    except Exception as exc:  # any syntax error of any of the three parsers
        raise MetricsFileError(path, f"not valid {suffix.lstrip('.') or 'JSON'} ({exc})") from None
    return flatten(parsed)


def _config_values(config_path: Path) -> list[str]:
    config = pygit2.Config(str(config_path))
    try:
        return list(config.get_multivar(_CONFIG_KEY))
    except pygit2.GitError as exc:
        raise MetricsFileError(str(config_path), f"not valid git-config syntax ({exc})") from None


def declared_metrics_files(repo: GitRepo, git: pygit2.Repository) -> list[str]:
    """The metrics files named in ``.thetaconfig``: the working tree's, else HEAD's."""
    if repo.worktree is not None and (repo.worktree / THETACONFIG).is_file():
        return _config_values(repo.worktree / THETACONFIG)
    if git.head_is_unborn:
        return []
    try:
        blob = git.head.peel(pygit2.Commit).tree[THETACONFIG]
    except KeyError:
        return []
    text = run_git(
        ["config", f"--blob={blob.id}", "--get-all"],
        operands=[_CONFIG_KEY],
        cwd=repo.cwd,
        check=False,
    )
    return text.splitlines()


def add_metrics_file(repo: GitRepo, path: str) -> bool:
    """Declare a metrics file (repository-relative) in ``.thetaconfig``; False if it already was."""
    if repo.worktree is None:
        raise ThetaError("`git theta metrics add` needs a working tree")
    config_path = repo.worktree / THETACONFIG
    if config_path.is_file() and path in _config_values(config_path):
        return False
    run_git(
        ["config", f"--file={config_path}", "--add"],
        operands=[_CONFIG_KEY, path],
        cwd=repo.worktree,
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
    for path in [model_path + CONVENTION_SUFFIX, *declared]:
        data = read_file(path)
        if data is None:
            continue
        try:
            metrics.update(parse_metrics_file(path, data))
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
