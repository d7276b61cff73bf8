"""The statistics cache: ``<git common dir>/theta/stats/v1.sqlite3``.

Statistics are a pure function of an object's bytes and of how a tensor line
reads them (dtype, shape, and offset/stride for a view), so they are cached
under that key forever: once a history has been seen, ``git theta-log`` reads
no tensor payload. Δ statistics need two tensors and are keyed by the pair.

The cache is disposable: deleting the directory only costs recomputation. It
uses SQLite in WAL mode so that concurrent commands share it safely and a
commit costs no fsync. A cache that cannot be opened or written (a read-only
repository, a corrupt file) is replaced by an in-memory one, with a warning.
"""

from __future__ import annotations

import math
import sqlite3
import sys
from collections.abc import Iterable
from pathlib import Path

from .manifest import TensorEntry

__all__ = ["StatsCache", "layout_key", "CACHE_FILE"]

# The version is in the file name: statistics computed differently go to a new file.
# v2: statistics are computed only from objects whose bytes hash to their id; v1 could
# hold numbers read from a damaged object.
CACHE_FILE = "v2.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tensor_stats (
    oid TEXT NOT NULL, layout TEXT NOT NULL,
    numel INTEGER NOT NULL, sum_squares REAL, min REAL, max REAL,
    nan_count INTEGER NOT NULL, inf_count INTEGER NOT NULL,
    PRIMARY KEY (oid, layout)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS delta_stats (
    old_oid TEXT NOT NULL, old_layout TEXT NOT NULL, new_oid TEXT NOT NULL, new_layout TEXT NOT NULL,
    numel INTEGER NOT NULL, changed_count INTEGER NOT NULL,
    delta_sum_squares REAL, dot REAL, max_abs_delta REAL, has_numbers INTEGER NOT NULL,
    PRIMARY KEY (old_oid, old_layout, new_oid, new_layout)
) WITHOUT ROWID;
"""  # noqa: E501 - SQLite keeps this text verbatim in sqlite_master

Row = tuple[object, ...]
# SQLite's default limit on the parameters of one statement is 999 (older builds).
_BATCH = 500


def layout_key(entry: TensorEntry) -> str:
    """How a tensor line reads its object, e.g.
    ``F32[16,8]`` or ``F32[5,32]@160[32,1]`` for a view.
    """
    key = f"{entry.dtype}[{','.join(map(str, entry.shape))}]"
    if entry.stride is not None:
        key += f"@{entry.offset}[{','.join(map(str, entry.stride))}]"
    return key


def _nan_to_null(value: float | None) -> float | None:
    # SQLite stores NaN as NULL anyway; being explicit keeps reads symmetric.
    return None if value is None or math.isnan(value) else value


class StatsCache:
    """Cached per-tensor and per-pair statistics, as plain rows (see :mod:`.stats`)."""

    def __init__(self, stats_dir: Path | None) -> None:
        self._db = self._open(stats_dir)

    @staticmethod
    def _open(stats_dir: Path | None) -> sqlite3.Connection:
        if stats_dir is not None:
            try:
                stats_dir.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(stats_dir / CACHE_FILE, timeout=30, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                return db
            except (OSError, sqlite3.Error) as exc:
                print(
                    f"git-theta: warning: statistics cache unavailable ({exc}); "
                    "computing without it",
                    file=sys.stderr,
                )
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.executescript(_SCHEMA)
        return db

    def close(self) -> None:
        self._db.close()

    def get_tensor(self, entry: TensorEntry) -> Row | None:
        return self._db.execute(
            "SELECT numel, sum_squares, min, max, nan_count, inf_count FROM tensor_stats WHERE "
            "oid=? AND layout=?",
            (entry.oid, layout_key(entry)),
        ).fetchone()

    def get_tensors(self, oids: Iterable[str]) -> dict[tuple[str, str], Row]:
        """Every cached row of these objects, keyed by (oid, layout), in a few queries."""
        rows: dict[tuple[str, str], Row] = {}
        for batch in _batches(oids):
            for oid, layout, *row in self._db.execute(
                "SELECT oid, layout, numel, sum_squares, min, max, nan_count, inf_count FROM "
                f"tensor_stats WHERE oid IN ({','.join('?' * len(batch))})",
                batch,
            ):
                rows[(oid, layout)] = tuple(row)
        return rows

    def get_deltas(self, old_oids: Iterable[str]) -> dict[tuple[str, str, str, str], Row]:
        """Every cached change *from* these objects, keyed by
        (old oid, old layout, new oid, new layout).
        """
        rows: dict[tuple[str, str, str, str], Row] = {}
        # By the old oid: the primary key's first column, so each batch is an index lookup.
        for batch in _batches(old_oids):
            for old_oid, old_layout, new_oid, new_layout, *row in self._db.execute(
                "SELECT old_oid, old_layout, new_oid, new_layout, numel, changed_count, "
                "delta_sum_squares, dot, max_abs_delta, has_numbers FROM delta_stats WHERE "
                f"old_oid IN ({','.join('?' * len(batch))})",
                batch,
            ):
                rows[(old_oid, old_layout, new_oid, new_layout)] = tuple(row)
        return rows

    def put_tensor(
        self,
        entry: TensorEntry,
        numel: int,
        sum_squares: float,
        low: float | None,
        high: float | None,
        nan_count: int,
        inf_count: int,
    ) -> None:
        self._write(
            "INSERT OR REPLACE INTO tensor_stats VALUES (?,?,?,?,?,?,?,?)",
            (
                entry.oid,
                layout_key(entry),
                numel,
                _nan_to_null(sum_squares),
                low,
                high,
                nan_count,
                inf_count,
            ),
        )

    def get_delta(self, old: TensorEntry, new: TensorEntry) -> Row | None:
        return self._db.execute(
            "SELECT numel, changed_count, delta_sum_squares, dot, max_abs_delta, "
            "has_numbers FROM delta_stats WHERE old_oid=? AND old_layout=? AND new_oid=? "
            "AND new_layout=?",
            (old.oid, layout_key(old), new.oid, layout_key(new)),
        ).fetchone()

    def put_delta(
        self,
        old: TensorEntry,
        new: TensorEntry,
        numel: int,
        changed_count: int,
        delta_sum_squares: float | None,
        dot: float | None,
        max_abs_delta: float | None,
    ) -> None:
        self._write(
            "INSERT OR REPLACE INTO delta_stats VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                old.oid,
                layout_key(old),
                new.oid,
                layout_key(new),
                numel,
                changed_count,
                _nan_to_null(delta_sum_squares),
                _nan_to_null(dot),
                _nan_to_null(max_abs_delta),
                int(delta_sum_squares is not None),
            ),
        )

    def _write(self, sql: str, row: Row) -> None:
        try:
            self._db.execute(sql, row)
        except sqlite3.Error as exc:
            # A cache that cannot be written must not stop a diff: carry on in memory.
            print(f"git-theta: warning: statistics cache not written ({exc})", file=sys.stderr)
            self._db.close()
            self._db = self._open(None)
            self._db.execute(sql, row)


def _batches(values: Iterable[str]) -> Iterable[list[str]]:
    unique = sorted(set(values))
    for start in range(0, len(unique), _BATCH):
        yield unique[start : start + _BATCH]
