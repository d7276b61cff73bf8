"""What the framework callbacks share: open the repository, track the checkpoint's files,
format the message, commit through the API, and time it.
"""

from __future__ import annotations

import math
import os
import re
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api import Repository
from ..api import open as open_repository

__all__ = ["CommitRecord", "Committer", "scalar_metrics", "format_message"]

# File names a checkpoint's tensors live in; every other file is committed as plain git content.
MODEL_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class CommitRecord:
    """One commit made during training, and how long training waited for it."""

    commit: str
    step: int
    epoch: float | int | None
    # Putting the checkpoint in the work tree: Lightning's save_checkpoint; for 🤗, whose
    # Trainer has saved already, linking its folder into place.
    write_seconds: float
    commit_seconds: float  # cleaning it into the store and `git commit`

    @property
    def blocked_seconds(self) -> float:
        return self.write_seconds + self.commit_seconds


def _number(value: Any) -> float | int | bool | None:
    """A Python number, or the one element of a tensor or array; None for anything else."""
    if isinstance(value, (bool, int, float)):
        return value
    size = value.numel() if callable(getattr(value, "numel", None)) else getattr(value, "size", 0)
    if size == 1 and callable(getattr(value, "item", None)):
        item = value.item()
        return item if isinstance(item, (bool, int, float)) else None
    return None


def scalar_metrics(values: Mapping[str, Any]) -> dict[str, float | int | bool]:
    """The numbers among logged values: Python numbers, and one-element tensors or arrays."""
    numbers = {name: _number(value) for name, value in values.items()}
    return {name: number for name, number in numbers.items() if number is not None}


class _Fields(dict):
    """Message fields: a metric the template names but this step lacks formats as nan."""

    def __missing__(self, key: str) -> float:
        return math.nan


def _short(value: float | int | bool) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_message(
    template: str, step: int, epoch: float | int | None, metrics: Mapping[str, Any]
) -> str:
    """``template`` with ``{step}``, ``{epoch}``, ``{metrics}`` (``name=value`` pairs) and
    any metric whose name is an identifier (``{val_loss:.3f}``).
    """
    fields = _Fields({name: value for name, value in metrics.items() if name.isidentifier()})
    fields.update(
        step=step,
        epoch=epoch,
        metrics=" ".join(f"{name}={_short(value)}" for name, value in sorted(metrics.items())),
    )
    return string.Formatter().vformat(template, (), fields)


def _attribute_pattern(path: str) -> str:
    """A .gitattributes pattern that matches exactly ``path`` (from the top of the work tree)."""
    return "/" + re.sub(r"([*?\[\\])", r"\\\1", path)


class Committer:
    """Commits checkpoint files of one repository, and keeps a :class:`CommitRecord` of each."""

    def __init__(self, repo: str | os.PathLike[str], message: str) -> None:
        self.repo_path = repo
        self.message = message
        self.records: list[CommitRecord] = []
        self._repo: Repository | None = None

    @property
    def repo(self) -> Repository:
        """The repository, opened on first use: a missing filter fails before training starts."""
        if self._repo is None:
            self._repo = open_repository(self.repo_path)
        return self._repo

    def worktree_path(self, path: str | os.PathLike[str], link: bool = True) -> Path:
        """``path`` in the work tree, refused through a symbolic link (and at one, unless
        ``link``): a framework writes there, and a commit may have put a link in its place.
        """
        return self.repo.path / self.relative(path, link)

    def relative(self, path: str | os.PathLike[str], link: bool = True) -> str:
        """``path`` from the top of the work tree, checked as :meth:`worktree_path` does."""
        # The API's own check, shared with the integrations of this package.
        return self.repo._worktree_target(path, link)

    def track(self, paths: Sequence[str]) -> None:
        """Route those of ``paths`` that the filter does not track yet through it, one
        exact pattern each, in .gitattributes (staged, so the next commit carries it).
        """
        tracked = self.repo.tracked_paths(paths)
        untracked = [path for path in paths if path not in tracked]
        if untracked:
            self.repo.track(*(_attribute_pattern(path) for path in untracked))

    def commit(
        self,
        files: Sequence[str],
        metrics: Mapping[str, float | int | bool],
        metrics_for: str,
        step: int,
        epoch: float | int | None,
        write_seconds: float,
    ) -> CommitRecord:
        """Commit ``files`` (repository-relative) with ``metrics`` beside ``metrics_for``."""
        start = time.perf_counter()
        message = format_message(self.message, step, epoch, metrics)
        commit = self.repo.commit_files(files, message, dict(metrics), metrics_for=metrics_for)
        record = CommitRecord(commit, step, epoch, write_seconds, time.perf_counter() - start)
        self.records.append(record)
        return record

    def summary(self) -> str | None:
        """One line on how long training waited for the commits, or None before any."""
        if not self.records:
            return None
        blocked = sorted(record.blocked_seconds for record in self.records)
        return (
            f"git-theta: {len(blocked)} commit(s); training waited "
            f"{blocked[len(blocked) // 2]:.2f} s (median), {blocked[-1]:.2f} s (longest), "
            f"{sum(blocked):.2f} s in all"
        )


def describe(record: CommitRecord, path: str) -> str:
    epoch = f"epoch {record.epoch}, " if record.epoch is not None else ""
    return (
        f"git-theta: committed {path} as {record.commit[:7]} ({epoch}step {record.step}): "
        f"written in {record.write_seconds:.2f} s, committed in {record.commit_seconds:.2f} s"
    )
