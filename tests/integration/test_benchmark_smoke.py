"""benchmarks/run.py --quick: the CI smoke run of the benchmark
(it proves the script works, not the speed).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


def test_benchmark_quick_run_prints_every_scenario_and_target(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    table = result.stdout
    for row in (
        "| add+commit new | wall time |",
        "| add+commit fine-tune | repo growth |",
        "| add+commit full change | peak RSS |",
        "| checkout previous | wall time |",
        "| checkout back | wall time |",
        "| status after touch | wall time |",
        "| `sha256sum file` |",
        "| `git add through a filter that reads and sha256s (null_filter.py --sha256)` |",
        "| add+commit new, theta peak RSS ≤ 150 MB |",
        "| add+commit new | wall time of the add |",
        "| add of the fine-tune, theta / git-lfs time ≤ 0.3 |",
    ):
        assert row in table, f"{row!r} missing from:\n{table}"
    assert "theta only" in table
    assert not list(tmp_path.iterdir()), "the benchmark left files behind"


STORAGE_BENCHMARK = BENCHMARK.with_name("bench_storage.py")


def test_storage_benchmark_quick_run_prints_every_scenario_and_target(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(STORAGE_BENCHMARK), "--quick", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    table = result.stdout
    for row in (
        "| training fp32 | growth per commit |",
        "| training bf16 | amortised |",
        "| training fp32 + Adam | checkout last |",
        "| 300 tensors of 16 KB | add |",
        "| MLP 784-128-64-10, add + commit in a loop | per commit (git theta commit) |",
        "| training bf16: growth per commit (amortised) ≤ 0.45× |",
        "| filter handshake ≤ 0.060 s |",
    ):
        assert row in table, f"{row!r} missing from:\n{table}"
    assert not list(tmp_path.iterdir()), "the benchmark left files behind"
