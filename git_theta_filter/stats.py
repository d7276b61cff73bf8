"""Per-tensor statistics and the statistics of a change, in float64 with numpy only.

For one tensor: the number of elements, the sum of squares (so ‖t‖₂), the
minimum and maximum of its finite elements, and how many are NaN or ±inf.
For a pair of tensors of one shape: how many elements changed (bitwise), and
for floating types the sum of squares of the difference, the dot product (for
the cosine similarity) and the largest absolute difference.

Elements are decoded to float64 a chunk at a time (see :mod:`.elements`), so
memory stays flat whatever the tensor's size. Sums of squares are summed per
chunk with ``einsum`` (numpy's own loop: BLAS ``dot`` measured several times
slower here once it starts threads for each call) and across chunks with
:func:`math.fsum`. Integer tensors get norms too; complex and quantized ones
only changed/unchanged. Results are cached through :class:`.StatsCache`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .elements import (
    CHUNK_ELEMENTS,
    ElementType,
    Kind,
    element_type,
    iter_chunk_pairs,
    iter_chunks,
    open_elements,
)
from .manifest import TensorEntry
from .stats_cache import Row, StatsCache, layout_key
from .store.local import LocalStore

__all__ = ["TensorStats", "DeltaStats", "Statistician", "tensor_stats_of", "delta_stats_of"]


@dataclass(frozen=True)
class TensorStats:
    numel: int
    sum_squares: float
    min: float | None  # of the finite elements; None when there are none
    max: float | None
    nan_count: int
    inf_count: int

    @property
    def norm(self) -> float:
        return math.sqrt(self.sum_squares) if not math.isnan(self.sum_squares) else math.nan


@dataclass(frozen=True)
class DeltaStats:
    """``new − old``. The numbers are None for types that report changed/unchanged only."""

    numel: int
    changed_count: int
    delta_sum_squares: float | None = None
    dot: float | None = None
    max_abs_delta: float | None = None

    @property
    def delta_norm(self) -> float | None:
        if self.delta_sum_squares is None:
            return None
        return (
            math.sqrt(self.delta_sum_squares)
            if not math.isnan(self.delta_sum_squares)
            else math.nan
        )

    @property
    def changed_fraction(self) -> float:
        return self.changed_count / self.numel if self.numel else 0.0


@dataclass
class _Moments:
    """Running statistics of one tensor, fed float64 chunks."""

    sum_squares: list[float] = field(default_factory=list)
    low: float = math.inf
    high: float = -math.inf
    nan_count: int = 0
    inf_count: int = 0

    def add(self, values: np.ndarray) -> None:
        squares = float(np.einsum("i,i->", values, values))
        self.sum_squares.append(squares)
        if math.isfinite(squares):
            # Every element is finite, or the sum could not be.
            self.low = min(self.low, float(values.min()))
            self.high = max(self.high, float(values.max()))
            return
        nan = np.isnan(values)
        inf = np.isinf(values)
        self.nan_count += int(np.count_nonzero(nan))
        self.inf_count += int(np.count_nonzero(inf))
        finite = values[~(nan | inf)]
        if finite.size:
            self.low = min(self.low, float(finite.min()))
            self.high = max(self.high, float(finite.max()))

    def result(self, numel: int) -> TensorStats:
        total = (
            math.fsum(self.sum_squares)
            if not any(math.isnan(s) for s in self.sum_squares)
            else math.nan
        )
        if not math.isnan(total) and any(math.isinf(s) for s in self.sum_squares):
            total = math.inf
        has_finite = self.low <= self.high
        return TensorStats(
            numel,
            total,
            self.low if has_finite else None,
            self.high if has_finite else None,
            self.nan_count,
            self.inf_count,
        )


def tensor_stats_of(elements: np.ndarray, etype: ElementType) -> TensorStats:
    """Statistics of a tensor's stored elements (see :func:`.elements.open_elements`)."""
    if etype.decode is None:
        raise ValueError(f"{etype.name} has no numeric statistics")
    moments = _Moments()
    buffer = np.empty(min(CHUNK_ELEMENTS, max(elements.size, 1)))
    for raw in iter_chunks(elements):
        values = buffer[: raw.size]
        etype.decode(raw, values)
        moments.add(values)
    return moments.result(elements.size)


def delta_stats_of(
    old: np.ndarray, old_type: ElementType, new: np.ndarray, new_type: ElementType
) -> tuple[DeltaStats, TensorStats | None, TensorStats | None]:
    """The change from ``old`` to ``new`` (one shape), plus each side's own statistics.

    Both sides are read once. Elements count as changed when their bits
    differ (for one dtype) or their values differ (across dtypes).
    """
    same_type = old_type.name == new_type.name
    numeric = old_type.decode is not None and new_type.decode is not None
    floating = numeric and old_type.kind is Kind.FLOAT and new_type.kind is Kind.FLOAT
    size = min(CHUNK_ELEMENTS, max(old.size, 1))
    old_values, new_values, difference = np.empty(size), np.empty(size), np.empty(size)
    old_moments, new_moments = _Moments(), _Moments()
    changed = 0
    delta_squares: list[float] = []
    dots: list[float] = []
    max_abs = 0.0
    for old_raw, new_raw in iter_chunk_pairs(old, new):
        if same_type:
            changed += int(
                np.count_nonzero(old_raw.view(old_type.bits) != new_raw.view(new_type.bits))
            )
        if not numeric:
            continue
        # numeric says both decoders exist, which mypy cannot follow.
        assert old_type.decode is not None and new_type.decode is not None
        count = old_raw.size
        x, y = old_values[:count], new_values[:count]
        old_type.decode(old_raw, x)
        new_type.decode(new_raw, y)
        old_moments.add(x)
        new_moments.add(y)
        if not same_type:
            changed += int(np.count_nonzero(x != y))
        if not floating:
            continue
        d = difference[:count]
        np.subtract(y, x, out=d)
        squares = float(np.einsum("i,i->", d, d))
        delta_squares.append(squares)
        dots.append(float(np.einsum("i,i->", x, y)))
        if math.isfinite(squares):
            max_abs = max(max_abs, float(d.max()), -float(d.min()))
        elif not np.isnan(d).all():
            max_abs = max(max_abs, float(np.nanmax(np.abs(d))))
    delta = DeltaStats(old.size, changed)
    if floating:
        delta = DeltaStats(old.size, changed, _total(delta_squares), _total(dots), max_abs)
    if not numeric:
        return delta, None, None
    return delta, old_moments.result(old.size), new_moments.result(new.size)


def _total(partials: list[float]) -> float:
    """An accurate sum that propagates NaN and ±inf as plain addition would."""
    if any(not math.isfinite(p) for p in partials):
        return sum(partials)
    return math.fsum(partials)


class Statistician:
    """Statistics of tensors in the store, through the cache.

    Raises :class:`~git_theta_filter.store.local.ObjectMissingError` for a
    statistic that is not cached and whose object is not in the store.
    """

    def __init__(self, store: LocalStore, cache: StatsCache, workers: int | None = None) -> None:
        self.store = store
        self.cache = cache
        # numpy releases the GIL in its loops, so tensors are read on several threads.
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.bytes_read = 0
        # Results by key, so that a log of many commits, which asks for each tensor
        # twice (as new, then as old), goes to SQLite once per manifest (prefetch).
        self._prefetched: set[str] = set()
        self._tensors: dict[tuple[str, str], TensorStats] = {}
        self._deltas: dict[tuple[str, str, str, str], DeltaStats] = {}

    @classmethod
    def for_repo(cls, theta_dir: Path) -> Statistician:
        return cls(LocalStore(theta_dir), StatsCache(theta_dir / "stats"))

    def prefetch(self, entries: Iterable[TensorEntry]) -> None:
        """Read the cached statistics of these tensors, and of changes from them,
        in a few queries.
        """
        oids = {entry.oid for entry in entries} - self._prefetched
        if not oids:
            return
        for key, row in self.cache.get_tensors(oids).items():
            self._tensors[key] = _tensor_from_row(row)
        for key4, row in self.cache.get_deltas(oids).items():
            self._deltas[key4] = _delta_from_row(row)
        self._prefetched |= oids

    def compute_ahead(
        self, pairs: list[tuple[TensorEntry, TensorEntry]], entries: list[TensorEntry]
    ) -> None:
        """Compute on several threads what is not known yet: the changes of ``pairs``,
        then ``entries``.

        Failures (a missing or corrupt object) are left for :meth:`delta_stats`
        and :meth:`tensor_stats` to raise when they are asked.
        """
        pairs = [(old, new) for old, new in pairs if _delta_key(old, new) not in self._deltas]
        covered = {_tensor_key(entry) for pair in pairs for entry in pair}
        singles = [
            entry
            for entry in dict.fromkeys(entries)
            if element_type(entry.dtype).decode is not None
            and _tensor_key(entry) not in self._tensors
            and _tensor_key(entry) not in covered
        ]
        if self.workers < 2 or len(pairs) + len(singles) < 2:
            return
        with ThreadPoolExecutor(self.workers) as pool:
            delta_jobs = [
                ((old, new), pool.submit(self._read_delta, old, new)) for old, new in pairs
            ]
            tensor_jobs = [(entry, pool.submit(self._read_tensor, entry)) for entry in singles]
            for (old, new), job in delta_jobs:
                if job.exception() is None:
                    self._remember_delta(old, new, *job.result())
            for entry, tensor_job in tensor_jobs:
                if tensor_job.exception() is None:
                    self._remember_tensor(entry, tensor_job.result())

    def tensor_stats(self, entry: TensorEntry) -> TensorStats | None:
        """None for types without numeric statistics (complex, quantized)."""
        if element_type(entry.dtype).decode is None:
            return None
        key = _tensor_key(entry)
        if key not in self._tensors:
            row = self.cache.get_tensor(entry)
            if row is not None:
                self._tensors[key] = _tensor_from_row(row)
            else:
                self._remember_tensor(entry, self._read_tensor(entry))
        return self._tensors[key]

    def delta_stats(self, old: TensorEntry, new: TensorEntry) -> DeltaStats:
        """The change between two tensor lines of one shape."""
        key = _delta_key(old, new)
        if key not in self._deltas:
            row = self.cache.get_delta(old, new)
            if row is not None:
                self._deltas[key] = _delta_from_row(row)
            else:
                self._remember_delta(old, new, *self._read_delta(old, new))
        return self._deltas[key]

    # Reading runs on worker threads; remembering (SQLite, counters) on the calling thread.
    def _read_tensor(self, entry: TensorEntry) -> TensorStats:
        return tensor_stats_of(open_elements(self.store, entry), element_type(entry.dtype))

    def _read_delta(
        self, old: TensorEntry, new: TensorEntry
    ) -> tuple[DeltaStats, TensorStats | None, TensorStats | None]:
        old_elements = open_elements(self.store, old)
        new_elements = open_elements(self.store, new)
        return delta_stats_of(
            old_elements, element_type(old.dtype), new_elements, element_type(new.dtype)
        )

    def _remember_tensor(self, entry: TensorEntry, stats: TensorStats) -> None:
        self._tensors[_tensor_key(entry)] = stats
        self.bytes_read += entry.nbytes
        self.cache.put_tensor(
            entry,
            stats.numel,
            stats.sum_squares,
            stats.min,
            stats.max,
            stats.nan_count,
            stats.inf_count,
        )

    def _remember_delta(
        self,
        old: TensorEntry,
        new: TensorEntry,
        delta: DeltaStats,
        old_stats: TensorStats | None,
        new_stats: TensorStats | None,
    ) -> None:
        self._deltas[_delta_key(old, new)] = delta
        self.cache.put_delta(
            old,
            new,
            delta.numel,
            delta.changed_count,
            delta.delta_sum_squares,
            delta.dot,
            delta.max_abs_delta,
        )
        if old_stats is not None and new_stats is not None:
            self._remember_tensor(old, old_stats)
            self._remember_tensor(new, new_stats)


def _tensor_key(entry: TensorEntry) -> tuple[str, str]:
    return entry.oid, layout_key(entry)


def _delta_key(old: TensorEntry, new: TensorEntry) -> tuple[str, str, str, str]:
    return old.oid, layout_key(old), new.oid, layout_key(new)


# A cache row's columns are typed object (sqlite3 does not say), hence the ignores below.
def _tensor_from_row(row: Row) -> TensorStats:
    numel, squares, low, high, nans, infs = row
    return TensorStats(int(numel), _float(squares), low, high, int(nans), int(infs))  # type: ignore[arg-type, call-overload]


def _delta_from_row(row: Row) -> DeltaStats:
    numel, changed, squares, dot, max_abs, has_numbers = row
    if not has_numbers:
        return DeltaStats(int(numel), int(changed))  # type: ignore[call-overload]
    return DeltaStats(int(numel), int(changed), _float(squares), _float(dot), _float(max_abs))  # type: ignore[call-overload]


def _float(value: object) -> float:
    return math.nan if value is None else float(value)  # type: ignore[arg-type]
