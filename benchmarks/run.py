#!/usr/bin/env python3
"""Theta, git-lfs and plain git side by side, in one run, as a Markdown table.

    python benchmarks/run.py                 # 500 MB checkpoint, 3 runs, medians
    python benchmarks/run.py --quick         # a small checkpoint, 1 run (CI smoke)

The checkpoint is a synthetic GPT-2-small-like fp32 ``state_dict`` saved with
``torch.save``. torch is imported only here, to make it; the git commands being
measured never import it. Every repository gets its own HOME with
``GIT_CONFIG_NOSYSTEM=1``, so each tool is configured explicitly and a system
``[filter "lfs"]`` cannot leak into the theta or plain-git runs.

The machines this runs on are noisy, so only ratios between numbers from the
same run mean much. Each run measures every tool once, in turn, and the table
reports medians over runs. The floor (``cat``, ``sha256sum``, ``cp`` of the
same file, and ``git add`` through a filter that only reads it,
``null_filter.py``) is measured in the same runs.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from _sandbox import sandbox_env

QUICK_SIZE_MB = 16
# GPT-2 small: 12 blocks, 1024 positions, a 50257-token vocabulary, width 768.
LAYERS = 12
POSITIONS = 1024
VOCAB = 50257
LABELS = 2
# A "fine-tune" changes about this share of the tensors: the last blocks and the head.
FINE_TUNE_SHARE = 0.10
BENCH_LOG_DIFF = Path(__file__).with_name("bench_log_diff.py")


# -- the checkpoints ----------------------------------------------------------


@dataclass
class Checkpoints:
    new: Path  # the first commit
    fine_tune: Path  # the last blocks and the head changed
    full_change: Path  # every tensor changed
    quarter: Path  # a checkpoint a quarter of the size, to see whether memory grows with size
    tensor_count: int
    changed_tensors: int
    changed_bytes: int
    size: int


def _width_for(target_bytes: int) -> int:
    """The model width whose fp32 GPT-2-shaped state_dict is closest to ``target_bytes``."""
    # Parameters: embeddings (VOCAB + POSITIONS) * w, each block 12 w^2 + 13 w,
    # final layer norm 2 w, classification head LABELS * w.
    a = 12 * LAYERS
    b = VOCAB + POSITIONS + 13 * LAYERS + 2 + LABELS
    params = target_bytes / 4
    return max(8, round((-b + math.sqrt(b * b + 4 * a * params)) / (2 * a)))


def _state_dict(width: int, seed: int) -> dict:
    import torch

    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int):
        return torch.randn(*shape, generator=generator) * 0.02

    sd = {
        "transformer.wte.weight": randn(VOCAB, width),
        "transformer.wpe.weight": randn(POSITIONS, width),
    }
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        sd[p + "ln_1.weight"] = torch.ones(width)
        sd[p + "ln_1.bias"] = torch.zeros(width)
        sd[p + "attn.c_attn.weight"] = randn(width, 3 * width)
        sd[p + "attn.c_attn.bias"] = randn(3 * width)
        sd[p + "attn.c_proj.weight"] = randn(width, width)
        sd[p + "attn.c_proj.bias"] = randn(width)
        sd[p + "ln_2.weight"] = torch.ones(width)
        sd[p + "ln_2.bias"] = torch.zeros(width)
        sd[p + "mlp.c_fc.weight"] = randn(width, 4 * width)
        sd[p + "mlp.c_fc.bias"] = randn(4 * width)
        sd[p + "mlp.c_proj.weight"] = randn(4 * width, width)
        sd[p + "mlp.c_proj.bias"] = randn(width)
    sd["transformer.ln_f.weight"] = torch.ones(width)
    sd["transformer.ln_f.bias"] = torch.zeros(width)
    # The head a classification fine-tune trains (GPT2ForSequenceClassification's "score").
    sd["score.weight"] = randn(LABELS, width)
    return sd


def _fine_tuned_names(names: list[str]) -> list[str]:
    """The last blocks, the final layer norm and the head: about FINE_TUNE_SHARE of the tensors."""
    per_block = sum(1 for n in names if n.startswith("transformer.h.0."))
    tail = ["transformer.ln_f.weight", "transformer.ln_f.bias", "score.weight"]
    blocks = max(1, round((FINE_TUNE_SHARE * len(names) - len(tail)) / per_block))
    prefixes = tuple(f"transformer.h.{i}." for i in range(LAYERS - blocks, LAYERS))
    return [n for n in names if n.startswith(prefixes)] + tail


def make_checkpoints(directory: Path, size_mb: float) -> Checkpoints:
    import torch

    def save(sd: dict, name: str) -> Path:
        # Every version is saved as model.pth: torch.save puts the file stem in
        # the archive, and a real training run overwrites one file name.
        path = directory / name / "model.pth"
        path.parent.mkdir(parents=True)
        torch.save(sd, path)
        return path

    width = _width_for(int(size_mb * 2**20))
    base = _state_dict(width, seed=1)
    new = save(base, "new")
    changed = _fine_tuned_names(list(base))
    generator = torch.Generator().manual_seed(2)
    # One optimizer step's worth of change on the chosen tensors.
    tuned = {
        n: t + 1e-3 * torch.randn(t.shape, generator=generator) if n in changed else t
        for n, t in base.items()
    }
    fine_tune = save(tuned, "fine-tune")
    stepped = {n: t + 1e-3 * torch.randn(t.shape, generator=generator) for n, t in tuned.items()}
    full_change = save(stepped, "full-change")
    quarter = save(_state_dict(_width_for(int(size_mb * 2**20 / 4)), seed=3), "quarter")
    return Checkpoints(
        new=new,
        fine_tune=fine_tune,
        full_change=full_change,
        quarter=quarter,
        tensor_count=len(base),
        changed_tensors=len(changed),
        changed_bytes=sum(base[n].numel() * base[n].element_size() for n in changed),
        size=new.stat().st_size,
    )


# -- measuring commands -------------------------------------------------------


@dataclass
class Measured:
    seconds: float
    peak_rss_kb: int


# Runs the command in a fresh, small interpreter. The peak RSS of a child that
# this process forked directly would start at this process's own size (torch
# is loaded here), because Linux carries the high-water mark across fork+exec.
_WRAPPER = """
import os, resource, subprocess, sys, time
report, *command = sys.argv[1:]
served = report + ".served"
os.environ["GIT_THETA_FILTER_USAGE"] = served
start = time.perf_counter()
code = subprocess.call(command)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
if os.path.exists(served):
    with open(served) as f:
        peak = max([peak, *(int(line.split()[0]) for line in f)])
    os.unlink(served)
with open(report, "w") as f:
    f.write(f"{seconds} {peak}")
sys.exit(code)
"""


def measure(args: list[str], cwd: Path, env: dict[str, str]) -> Measured:
    """Wall time, and the peak RSS of the largest process in the command's tree.

    RUSAGE_CHILDREN covers every descendant that was waited for, and git waits
    for its filter processes, so a filter serving git itself is included; a
    filter server's child, which is not in the tree, reports its own
    (GIT_THETA_FILTER_USAGE, docs/filter-server.md).
    """
    # Write back what earlier steps left dirty, so that this step is not
    # charged for another tool's writes.
    os.sync()
    with tempfile.TemporaryFile() as stderr, tempfile.NamedTemporaryFile("r") as report:
        result = subprocess.run(
            [sys.executable, "-c", _WRAPPER, report.name, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        if result.returncode != 0:
            stderr.seek(0)
            message = stderr.read().decode(errors="replace")
            raise RuntimeError(
                f"`{' '.join(args)}` failed ({result.returncode}) in {cwd}:\n{message}"
            )
        seconds, peak_rss_kb = report.read().split()
    return Measured(float(seconds), int(peak_rss_kb))


def tree_bytes(path: Path) -> int:
    """Apparent size of every file under ``path`` (du -sb), hard links counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def git(env: dict[str, str], cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


# -- the tools ----------------------------------------------------------------

TOOLS = ("theta", "git-lfs", "plain git")


def setup_repo(tool: str, repo: Path, env: dict[str, str]) -> None:
    """A fresh repository with ``*.pth`` routed through ``tool``, configured explicitly."""
    git(env, repo.parent, "init", "-q", str(repo))
    if tool == "theta":
        git(env, repo, "theta", "install", "--local")
        git(env, repo, "theta", "track", "*.pth")
    elif tool == "git-lfs":
        git(env, repo, "lfs", "install", "--local")
        git(env, repo, "lfs", "track", "*.pth")
    else:
        (repo / ".gitattributes").write_text("")
    git(env, repo, "add", ".gitattributes")
    git(env, repo, "commit", "-qm", "track models")


@dataclass
class ToolRun:
    """One tool's figures from one run; keys are scenario names."""

    seconds: dict[str, float] = field(default_factory=dict)
    add_seconds: dict[str, float] = field(default_factory=dict)  # the `git add` alone
    rss_kb: dict[str, int] = field(default_factory=dict)
    growth: dict[str, int] = field(default_factory=dict)


COMMITS = (
    ("add+commit new", "new"),
    ("add+commit fine-tune", "fine_tune"),
    ("add+commit full change", "full_change"),
)


def run_tool(tool: str, checkpoints: Checkpoints, workdir: Path) -> ToolRun:
    home = workdir / "home"
    home.mkdir(parents=True)
    env = sandbox_env(home)
    for key, value in (
        ("user.name", "Bench"),
        ("user.email", "bench@example.invalid"),
        ("init.defaultBranch", "main"),
    ):
        git(env, home, "config", "--global", key, value)
    repo = workdir / "repo"
    setup_repo(tool, repo, env)
    git_dir = repo / ".git"
    model = repo / "model.pth"
    result = ToolRun()

    def commit(scenario: str, source: Path) -> None:
        shutil.copyfile(source, model)
        before = tree_bytes(git_dir)
        add = measure(["git", "add", "model.pth"], repo, env)
        done = measure(["git", "commit", "-qm", scenario], repo, env)
        result.seconds[scenario] = add.seconds + done.seconds
        result.add_seconds[scenario] = add.seconds
        result.rss_kb[scenario] = max(add.peak_rss_kb, done.peak_rss_kb)
        result.growth[scenario] = tree_bytes(git_dir) - before

    for scenario, attr in COMMITS:
        commit(scenario, getattr(checkpoints, attr))
    result.seconds["checkout previous"] = measure(
        ["git", "checkout", "-q", "HEAD~1"], repo, env
    ).seconds
    result.seconds["checkout back"] = measure(["git", "checkout", "-q", "main"], repo, env).seconds
    os.utime(model)
    result.seconds["status after touch"] = measure(
        ["git", "status", "--porcelain"], repo, env
    ).seconds
    if tool == "theta":
        # A second repository with a quarter-size checkpoint: if the filter's
        # memory grew with the file, its peak RSS would differ here.
        quarter = workdir / "quarter"
        setup_repo(tool, quarter, env)
        shutil.copyfile(checkpoints.quarter, quarter / "model.pth")
        result.rss_kb["add quarter-size"] = measure(
            ["git", "add", "model.pth"], quarter, env
        ).peak_rss_kb
    shutil.rmtree(workdir)
    return result


FLOOR_FILTER_READS = "git add through a filter that only reads (benchmarks/null_filter.py)"
FLOOR_FILTER_HASHES = "git add through a filter that reads and sha256s (null_filter.py --sha256)"
FLOORS = (
    "cat file > /dev/null",
    "sha256sum file",
    "cp file",
    "sha256 with OpenSSL (hashlib)",
    FLOOR_FILTER_READS,
    FLOOR_FILTER_HASHES,
)
# coreutils' sha256sum may not use the CPU's SHA instructions; OpenSSL, which
# theta uses through hashlib, does. Shown for reference; the target uses sha256sum.
_HASHLIB_SHA256 = "import hashlib, sys; hashlib.file_digest(open(sys.argv[1], 'rb'), 'sha256')"


def measure_floor(file: Path, workdir: Path) -> dict[str, float]:
    env = dict(os.environ)
    copy = workdir / "floor-copy"
    figures = {
        "cat file > /dev/null": measure(["cat", str(file)], workdir, env).seconds,
        "sha256sum file": measure(["sha256sum", str(file)], workdir, env).seconds,
        "cp file": measure(["cp", str(file), str(copy)], workdir, env).seconds,
        "sha256 with OpenSSL (hashlib)": measure(
            [sys.executable, "-c", _HASHLIB_SHA256, str(file)], workdir, env
        ).seconds,
    }
    copy.unlink()
    figures.update(_filter_floors(file, workdir / "floor-filter"))
    return figures


def _filter_floors(file: Path, workdir: Path) -> dict[str, float]:
    """``git add`` of ``file`` through benchmarks/null_filter.py, without and with sha256:
    what git and the pipe cost any process filter, before it does any work of its own."""
    home = workdir / "home"
    home.mkdir(parents=True)
    env = sandbox_env(home)
    repo = workdir / "repo"
    git(env, workdir, "init", "-q", str(repo))
    (repo / ".gitattributes").write_text("*.pth filter=floor\n")
    shutil.copyfile(file, repo / "model.pth")
    script = Path(__file__).resolve().parent / "null_filter.py"
    figures = {}
    for name, extra in ((FLOOR_FILTER_READS, ""), (FLOOR_FILTER_HASHES, " --sha256")):
        process = f"filter.floor.process={sys.executable} {script}{extra}"
        add = ["git", "-c", process, "-c", "filter.floor.required=true", "add", "model.pth"]
        figures[name] = measure(add, repo, env).seconds
        staged = subprocess.run(
            ["git", "cat-file", "-p", ":model.pth"], cwd=repo, env=env, capture_output=True
        ).stdout
        if not staged.startswith(f"floor {file.stat().st_size} ".encode()):
            raise RuntimeError(f"null_filter.py staged {staged[:80]!r}, not its one-line answer")
        git(env, repo, "read-tree", "--empty")  # unstaged again, without a clean
    shutil.rmtree(workdir)
    return figures


# -- the report ---------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f} MB"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}"


def _median(values: list) -> float | None:
    return statistics.median(values) if values else None


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def render(
    runs: dict[str, list[ToolRun]],
    floors: list[dict[str, float]],
    ck: Checkpoints,
    lfs_note: str,
    extra: str,
) -> str:
    tools = [t for t in TOOLS if runs.get(t)]

    def med(tool: str, kind: str, scenario: str) -> float | None:
        return _median(
            [getattr(r, kind)[scenario] for r in runs.get(tool, []) if scenario in getattr(r, kind)]
        )

    floor = {name: _median([f[name] for f in floors]) for name in FLOORS}
    hash_floor = (floor["cat file > /dev/null"] or 0) + (floor["sha256sum file"] or 0)
    lines = [
        f"Checkpoint: {ck.size / 2**20:.1f} MB, {ck.tensor_count} fp32 tensors (GPT-2-small-like); "
        f"fine-tune changes {ck.changed_tensors} tensors, {ck.changed_bytes / 2**20:.1f} MB. "
        f"Medians of {len(floors)} run(s). RSS is the largest process in the command's tree "
        "(git and its filter); growth is the apparent size added under .git (objects, theta/, "
        "lfs/).",
        "",
    ]
    if lfs_note:
        lines += [lfs_note, ""]
    header = "| scenario | figure | " + " | ".join(tools) + " | theta / git-lfs |"
    lines += [header, "|" + " --- |" * (len(tools) + 3)]

    def row(scenario: str, figure: str, kind: str, fmt) -> None:
        values = {t: med(t, kind, scenario) for t in tools}
        cells = " | ".join(fmt(values[t]) for t in tools)
        lines.append(
            f"| {scenario} | {figure} | {cells} | "
            f"{_ratio(values.get('theta'), values.get('git-lfs'))} |"
        )

    for scenario, _ in COMMITS:
        row(scenario, "wall time", "seconds", _seconds)
        row(scenario, "wall time of the add", "add_seconds", _seconds)
        row(scenario, "peak RSS", "rss_kb", lambda v: _mb(None if v is None else v * 1024))
        row(scenario, "repo growth", "growth", _mb)
    for scenario in ("checkout previous", "checkout back", "status after touch"):
        row(scenario, "wall time", "seconds", _seconds)

    lines += ["", "Floor, same file, same runs:", "", "| command | wall time |", "| --- | --- |"]
    lines += [f"| `{name}` | {_seconds(floor[name])} |" for name in FLOORS]

    lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
    lfs = "git-lfs" in tools

    def target(name: str, measured: float | None, limit: float, fmt=lambda v: f"{v:.3f}") -> None:
        shown = "n/a" if measured is None else fmt(measured)
        lines.append(
            f"| {name} | {shown} | {_met(None if measured is None else measured <= limit)} |"
        )

    def over_lfs(scenario: str, kind: str = "seconds") -> float | None:
        theta, other = med("theta", kind, scenario), med("git-lfs", kind, scenario)
        return theta / other if lfs and theta is not None and other else None

    target("add+commit new, theta / git-lfs time ≤ 0.5", over_lfs("add+commit new"), 0.5)
    target(
        "add+commit fine-tune, theta / git-lfs time ≤ 0.3", over_lfs("add+commit fine-tune"), 0.3
    )
    # Issue 16 sets its targets on the add alone.
    target(
        "add of a new checkpoint, theta / git-lfs time ≤ 0.4",
        over_lfs("add+commit new", "add_seconds"),
        0.4,
    )
    target(
        "add of the fine-tune, theta / git-lfs time ≤ 0.3",
        over_lfs("add+commit fine-tune", "add_seconds"),
        0.3,
    )
    growth_limit = 1.05 * ck.changed_bytes + 64 * 1024
    growth = med("theta", "growth", "add+commit fine-tune")
    target(
        f"add+commit fine-tune, theta growth ≤ 1.05 × changed + 64 KB = {_mb(growth_limit)}",
        growth,
        growth_limit,
        _mb,
    )
    checkout = [over_lfs(s) for s in ("checkout previous", "checkout back")]
    target(
        "checkout, theta / git-lfs ≤ 1.0 (worse of the two directions)",
        None if None in checkout else max(checkout),
        1.0,
    )
    rss = med("theta", "rss_kb", "add+commit new")
    quarter_rss = med("theta", "rss_kb", "add quarter-size")
    target(
        "add+commit new, theta peak RSS ≤ 150 MB",
        None if rss is None else rss * 1024,
        150 * 2**20,
        _mb,
    )
    if rss is not None and quarter_rss is not None:
        grows = rss - quarter_rss
        lines.append(
            f"| peak RSS not growing with the file: full size minus quarter size ≤ 16 MB | "
            f"{_mb(grows * 1024)} | {_met(grows <= 16 * 1024)} |"
        )
    new = med("theta", "seconds", "add+commit new")
    target(
        "add+commit new, theta / (`cat` + `sha256sum`) floor ≤ 2",
        None if new is None or not hash_floor else new / hash_floor,
        2.0,
    )
    openssl_floor = (floor["cat file > /dev/null"] or 0) + (
        floor["sha256 with OpenSSL (hashlib)"] or 0
    )
    if new is not None and openssl_floor:
        lines.append(
            "| (for reference, not a target) add+commit new, theta / (`cat` + OpenSSL sha256) | "
            f"{new / openssl_floor:.2f} | |"
        )
    filter_floor = floor[FLOOR_FILTER_HASHES]
    for scenario in ("add+commit new", "add+commit fine-tune"):
        other = med("git-lfs", "seconds", scenario)
        if lfs and filter_floor and other:
            lines.append(
                f"| (for reference, not a target) {scenario}: the floor of a filter that reads "
                f"and sha256s / git-lfs | {filter_floor / other:.2f} | |"
            )
    return "\n".join(lines) + "\n\n" + extra


def log_diff_section(args: argparse.Namespace) -> str:
    """The theta-only scenarios (theta-log over 50 commits, theta-diff),
    from benchmarks/bench_log_diff.py.
    """
    if not BENCH_LOG_DIFF.exists():
        return (
            "| theta only: `theta-log` over 50 commits, `theta-diff` "
            "| not yet available (benchmarks/bench_log_diff.py) |\n| --- | --- |\n"
        )
    command = [sys.executable, str(BENCH_LOG_DIFF), "--json"] + (["--quick"] if args.quick else [])
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return (
            f"theta only: benchmarks/bench_log_diff.py failed ({result.returncode}):\n\n"
            f"```\n{result.stderr.strip()}\n```\n"
        )
    report = json.loads(result.stdout)
    spec = importlib.util.spec_from_file_location("bench_log_diff", BENCH_LOG_DIFF)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    targets = getattr(module, "TARGETS", {})
    sizes = report["sizes"]
    lines = [
        f"theta only (benchmarks/bench_log_diff.py: theta-log over {sizes['commits']} commits of "
        f"{sizes['tensors']} tensors, theta-diff of two {sizes['diff_mb']} MB checkpoints; "
        "cold = no cached statistics):",
        "",
        "| command | wall time | peak RSS | target |",
        "| --- | --- | --- | --- |",
    ]
    for name, figures in report["figures"].items():
        limit = targets.get(name)
        verdict = "" if limit is None else f"≤ {limit:g} s: {_met(figures['seconds'] <= limit)}"
        lines.append(
            f"| {name} | {_seconds(figures['seconds'])} | {figures['peak_rss_mb']:.1f} "
            f"MB | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def machine_description() -> str:
    def version(*command: str) -> str:
        try:
            return (
                subprocess.run(command, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[0]
            )
        except (OSError, subprocess.CalledProcessError):
            return "missing"

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (
        f"{datetime.date.today().isoformat()}; {os.cpu_count()} CPUs, {memory / 2**30:.1f} GB "
        f"memory; Python {platform.python_version()}; {version('git', '--version')}; "
        f"{version('git', 'lfs', 'version')}; load average {os.getloadavg()[0]:.2f} "
        "(other work on the machine makes times noisy; compare ratios)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size-mb", type=float, default=500, help="checkpoint size in MB (default 500)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a {QUICK_SIZE_MB} MB checkpoint and 1 run: a smoke test, not a measurement",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="runs to take the median of (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where to put checkpoints and repositories (default: a temp dir)",
    )
    parser.add_argument(
        "--tools",
        default=",".join(TOOLS),
        help=f"comma-separated subset of: {', '.join(TOOLS)} (default: all)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mb = QUICK_SIZE_MB
    runs = args.runs or (1 if args.quick else 3)

    wanted = [t.strip() for t in args.tools.split(",")]
    if unknown := [t for t in wanted if t not in TOOLS]:
        parser.error(f"unknown tools {unknown}; choose from {list(TOOLS)}")
    have_lfs = subprocess.run(["git", "lfs", "version"], capture_output=True).returncode == 0
    tools = [t for t in TOOLS if t in wanted and (have_lfs or t != "git-lfs")]
    lfs_note = (
        ""
        if have_lfs or "git-lfs" not in wanted
        else "git-lfs is not installed: its column and the ratios to it are skipped."
    )
    if args.quick:
        lfs_note = (lfs_note + " " if lfs_note else "") + (
            "--quick is a smoke test: at this size start-up costs dominate, and the targets apply "
            "to the full size."
        )
    if lfs_note:
        print(lfs_note, file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="theta-bench-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        print(f"making a {args.size_mb:g} MB checkpoint ...", file=sys.stderr)
        checkpoints = make_checkpoints(workdir / "checkpoints", args.size_mb)
        results: dict[str, list[ToolRun]] = {t: [] for t in tools}
        floors = []
        for index in range(runs):
            floors.append(measure_floor(checkpoints.new, workdir))
            for tool in tools:
                print(f"run {index + 1}/{runs}: {tool} ...", file=sys.stderr)
                results[tool].append(
                    run_tool(tool, checkpoints, workdir / f"{tool.replace(' ', '-')}-{index}")
                )
        if set(wanted) == set(TOOLS):
            extra = log_diff_section(args)
        else:
            extra = "theta only (theta-log, theta-diff): skipped, as --tools chose a subset.\n"
        print(f"Machine: {machine_description()}\n")
        print(render(results, floors, checkpoints, lfs_note, extra), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
