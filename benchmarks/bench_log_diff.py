#!/usr/bin/env python3
"""Benchmark ``git theta-log`` and ``git theta-diff`` on generated repositories.

Builds, in a temporary directory with its own HOME (so ~/.gitconfig is left
alone):

* a repository with ``--commits`` commits of a ``--tensors``-tensor fp32
  model, every tensor changed by each commit (as a training run would), and
  times ``git theta-log`` cold (empty statistics cache) and warm;
* a repository with two ``--diff-mb`` MB fp32 checkpoints in which every
  tensor changed, and times ``git theta-diff HEAD~1 HEAD`` cold and warm.

Each timed command runs under a fresh Python wrapper that reports
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it: the peak RSS of
the command's process tree alone. Files are freshly written, so the page
cache is warm; "cold" means only that no statistics were cached.

    python benchmarks/bench_log_diff.py            # issue 3's sizes: 50 x 150 tensors, 2 x 500 MB
    python benchmarks/bench_log_diff.py --quick    # a small run, in seconds
    python benchmarks/bench_log_diff.py --json     # machine-readable figures
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _sandbox import sandbox_env

# Issue 3's targets, printed next to the measurements.
TARGETS = {"theta-log warm": 1.0, "theta-diff cold": 2.0}

_MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
seconds = time.perf_counter() - start
print(code, seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def run(env: dict[str, str], cwd: Path, *args: str) -> None:
    subprocess.run(args, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)


def measure(env: dict[str, str], cwd: Path, *args: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one run of ``args``."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *args],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    if out[0] != "0":
        raise SystemExit(f"{' '.join(args)} failed with exit code {out[0]}")
    return float(out[1]), int(out[2]) / 1024


def new_repo(env: dict[str, str], path: Path) -> Path:
    run(env, path.parent, "git", "init", "-q", str(path))
    run(env, path, "git", "theta", "track", "*.pth")
    run(env, path, "git", "add", ".gitattributes")
    run(env, path, "git", "commit", "-qm", "track")
    return path


def tensor_shapes(count: int, elements: int) -> list[tuple[int, ...]]:
    """``count`` weight/bias-like shapes whose sizes add up to about ``elements``."""
    per_weight = max(1, elements // max(1, count // 2 + (count % 2)))
    side = max(1, int(per_weight**0.5))
    return [(side, side) if i % 2 == 0 else (side,) for i in range(count)]


def build_log_repo(
    env: dict[str, str], path: Path, commits: int, tensors: int, elements: int
) -> Path:
    repo = new_repo(env, path)
    generator = torch.Generator().manual_seed(0)
    state = {
        f"layers.{i}.{'weight' if i % 2 == 0 else 'bias'}": torch.randn(shape, generator=generator)
        for i, shape in enumerate(tensor_shapes(tensors, elements))
    }
    for step in range(1, commits + 1):
        for tensor in state.values():
            tensor.add_(torch.randn(tensor.shape, generator=generator), alpha=1e-3)
        checkpoint = {
            "model": state,
            "step": step,
            "metrics": {"loss": 1.0 / step, "acc": 1 - 0.5 / step},
        }
        torch.save(checkpoint, repo / "model.pth")
        run(env, repo, "git", "add", "model.pth")
        run(env, repo, "git", "commit", "-qm", f"step {step}")
    return repo


def build_diff_repo(env: dict[str, str], path: Path, megabytes: int) -> Path:
    repo = new_repo(env, path)
    count = 20
    per_tensor = megabytes * 1_000_000 // 4 // count
    generator = torch.Generator().manual_seed(1)
    state = {
        f"blocks.{i}.weight": torch.randn(per_tensor, generator=generator) for i in range(count)
    }
    for step in (1, 2):
        if step == 2:
            for tensor in state.values():
                tensor.add_(torch.randn(tensor.shape, generator=generator), alpha=1e-3)
        torch.save({"model": state, "step": step}, repo / "model.pth")
        run(env, repo, "git", "add", "model.pth")
        run(env, repo, "git", "commit", "-qm", f"checkpoint {step}")
    return repo


def clear_stats(repo: Path) -> None:
    shutil.rmtree(repo / ".git" / "theta" / "stats", ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: 10 commits x 30 tensors, 2 x 20 MB"
    )
    parser.add_argument("--commits", type=int, help="commits in the log repository (default 50)")
    parser.add_argument("--tensors", type=int, help="tensors in the logged model (default 150)")
    parser.add_argument(
        "--log-elements", type=int, help="fp32 elements of the logged model (default 2,500,000)"
    )
    parser.add_argument(
        "--diff-mb", type=int, help="size of each diffed checkpoint in MB (default 500)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="warm runs; the fastest is reported")
    parser.add_argument(
        "--keep", metavar="DIR", help="build in DIR and keep it (default: a temporary directory)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    quick = {"commits": 10, "tensors": 30, "log_elements": 300_000, "diff_mb": 20}
    full = {"commits": 50, "tensors": 150, "log_elements": 2_500_000, "diff_mb": 500}
    sizes = {k: getattr(args, k) or (quick if args.quick else full)[k] for k in full}

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="theta-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        home = root / "home"
        home.mkdir(exist_ok=True)
        env = sandbox_env(home)
        for key, value in (("user.name", "Bench"), ("user.email", "bench@example.invalid")):
            run(env, home, "git", "config", "--global", key, value)
        run(env, home, "git-theta", "install", "--global")
        figures: dict[str, dict[str, float]] = {}

        started = time.perf_counter()
        log_repo = build_log_repo(
            env, root / "log-repo", sizes["commits"], sizes["tensors"], sizes["log_elements"]
        )
        print(
            f"built {sizes['commits']} commits x {sizes['tensors']} tensors in "
            f"{time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        clear_stats(log_repo)
        seconds, rss = measure(env, log_repo, "git", "theta-log")
        figures["theta-log cold"] = {"seconds": seconds, "peak_rss_mb": rss}
        warm = [measure(env, log_repo, "git", "theta-log") for _ in range(args.repeat)]
        figures["theta-log warm"] = {
            "seconds": min(s for s, _ in warm),
            "peak_rss_mb": max(r for _, r in warm),
        }

        started = time.perf_counter()
        diff_repo = build_diff_repo(env, root / "diff-repo", sizes["diff_mb"])
        shutil.rmtree(log_repo)  # free the disk before the big checkpoints are diffed
        print(
            f"built 2 x {sizes['diff_mb']} MB checkpoints in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        clear_stats(diff_repo)
        seconds, rss = measure(env, diff_repo, "git", "theta-diff", "HEAD~1", "HEAD")
        figures["theta-diff cold"] = {"seconds": seconds, "peak_rss_mb": rss}
        warm = [
            measure(env, diff_repo, "git", "theta-diff", "HEAD~1", "HEAD")
            for _ in range(args.repeat)
        ]
        figures["theta-diff warm"] = {
            "seconds": min(s for s, _ in warm),
            "peak_rss_mb": max(r for _, r in warm),
        }
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    if args.json:
        json.dump({"sizes": sizes, "figures": figures}, sys.stdout, indent=2)
        print()
        return 0
    print(f"sizes: {sizes}")
    print(f"{'command':<18}{'seconds':>9}{'peak RSS':>11}  target")
    for name, figure in figures.items():
        target = f"< {TARGETS[name]:g} s" if name in TARGETS else ""
        print(f"{name:<18}{figure['seconds']:>9.2f}{figure['peak_rss_mb']:>8.0f} MB  {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
