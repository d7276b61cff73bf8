#!/usr/bin/env python3
"""Time every parser of untrusted input on its worst case, against its budget.

The budgets are docs/security.md's (class 4, "Bounded work"): what a parser of
a manifest, an object header, a data.pkl or a safetensors header may cost on
the largest or most deeply nested input it accepts, or before it refuses one.
The tests (tests/hostile/test_bounded_work.py) check that the cost grows
linearly; this script measures it, in CPU seconds, best of ``--runs``:

    python benchmarks/bench_parsers.py            # the full sizes
    python benchmarks/bench_parsers.py --quick    # a tenth of them, in seconds
    python benchmarks/bench_parsers.py --json
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from git_theta_filter.clean import clean
from git_theta_filter.formats.pickle_scan import PickleScanError, scan_pickle
from git_theta_filter.manifest import MAX_MANIFEST_BYTES, Manifest, ManifestError
from git_theta_filter.store.local import LocalStore

OID = "a" * 64


def nested_lists(n: int) -> bytes:
    return b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."


def nested_dicts(n: int) -> bytes:
    return b"\x80\x02" + b"}X\x01\x00\x00\x00k" * (n - 1) + b"}" + b"s" * (n - 1) + b"."


def memo_chain(n: int) -> bytes:
    out = bytearray(b"\x80\x02]r\x00\x00\x00\x00")
    for i in range(1, n):
        out += b"]j" + (i - 1).to_bytes(4, "little") + b"ar" + i.to_bytes(4, "little")
    return bytes(out + b".")


def largest_manifest() -> bytes:
    """A manifest just under 32 MiB: as many tied tensor lines over one object as fit."""
    head = (
        f"git-theta-manifest 1\nformat torch-zip\nsize {1 << 30}\nsha256 {'5' * 64}\n"
        f"skeleton {'b' * 64}\n"
    )
    line = f"tensor t{{:07d}} F32 [1] {OID}\n"
    count = (MAX_MANIFEST_BYTES - len(head) - 100) // len(line.format(0))
    return (head + "".join(line.format(i) for i in range(count)) + f"splice 0 4 {OID}\n").encode()


def deep_safetensors(depth: int) -> bytes:
    header = b'{"t":' + b"[" * depth + b"]" * depth + b"}"
    return struct.pack("<Q", len(header)) + header


def wide_safetensors(entries: int) -> bytes:
    """A header of ``entries`` metadata strings (1 million: about 30 MB) and one tensor.

    Each tensor becomes an object file, whose cost is the store's, not the parser's: this
    measures the header alone.
    """
    metadata = {f"key{i:07d}": f"value{i:07d}" for i in range(entries)}
    header = {"__metadata__": metadata, "t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(raw)) + raw + b"x"


def attempt(call: Callable[[], object]) -> str:
    try:
        call()
    except (PickleScanError, ManifestError) as exc:
        return f"refused ({str(exc)[:50]})"
    return "accepted"


def cpu_seconds(call: Callable[[], object], runs: int) -> tuple[float, str]:
    best, outcome = float("inf"), ""
    for _ in range(runs):
        start = time.process_time()
        outcome = attempt(call)
        best = min(best, time.process_time() - start)
    return best, outcome


def cases(scale: float, scratch: Path) -> list[tuple[str, float, Callable[[], object]]]:
    n = int(1_000_000 * scale)
    store = LocalStore(scratch / "theta")
    manifest = largest_manifest() if scale == 1 else None
    wide = wide_safetensors(int(1_000_000 * scale))
    result: list[tuple[str, float, Callable[[], object]]] = [
        (f"data.pkl: {n} nested lists", 5.0, lambda: scan_pickle(nested_lists(n))),
        (f"data.pkl: {n} nested dicts", 5.0, lambda: scan_pickle(nested_dicts(n))),
        (f"data.pkl: {n} lists chained through the memo", 5.0, lambda: scan_pickle(memo_chain(n))),
        (
            f"safetensors header: {len(wide) >> 20} MB of metadata (clean)",
            5.0,
            lambda: clean(io.BytesIO(wide), store, "wide.safetensors", warn=lambda m: None),
        ),
        (
            "safetensors header: nested 100000 deep (clean)",
            1.0,
            lambda: clean(
                io.BytesIO(deep_safetensors(100_000)), store, "deep", warn=lambda m: None
            ),
        ),
    ]
    if manifest is not None:
        result.append(("manifest: 32 MiB of tensor lines", 5.0, lambda: Manifest.parse(manifest)))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    parser.add_argument("--runs", type=int, default=3, help="best of this many runs")
    parser.add_argument("--json", action="store_true", help="machine-readable figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="theta-bench-parsers-") as scratch:
        rows = []
        for name, budget, call in cases(0.1 if args.quick else 1.0, Path(scratch)):
            seconds, outcome = cpu_seconds(call, args.runs)
            rows.append(
                {
                    "case": name,
                    "cpu_seconds": round(seconds, 3),
                    "budget": budget,
                    "outcome": outcome,
                    "met": seconds <= budget,
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print("| input | outcome | CPU time | budget |")
        print("| --- | --- | --- | --- |")
        for row in rows:
            met = "met" if row["met"] else "NOT MET"
            print(
                f"| {row['case']} | {row['outcome']} | {row['cpu_seconds']:.2f} s | "
                f"≤ {row['budget']:.0f} s: {met} |"
            )
    return 0 if all(row["met"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
