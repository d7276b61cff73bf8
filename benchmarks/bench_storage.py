#!/usr/bin/env python3
"""Issue 16's scenarios: theta, git-lfs and plain git side by side, as Markdown tables.

    python benchmarks/bench_storage.py            # 50M parameters, 10 steps (the full run)
    python benchmarks/bench_storage.py --quick    # a tiny model, 3 steps (CI smoke)
    python benchmarks/bench_storage.py --only loop --tools theta,git-lfs   # one scenario

* **Training run.** A model of ~50M parameters (a stack of square linear
  layers) trained with Adam on random data, committed after each of 10 steps:
  weights in fp32, weights in bf16, and fp32 weights with the Adam state.
  Growth per commit is the size added under ``.git`` by commits 2 to 10, as
  a share of the checkpoint; *amortised* adds one full object every
  ``theta.maxDeltaDepth + 1`` commits (the first commit's growth), which is
  what a long run pays. Then ``git checkout`` of the first commit and back to
  the last, the end of a delta chain (medians of 3 rounds; see
  ``checkout_seconds`` for what each checkout includes).
* **Many small tensors.** 6,000 tensors of 16 KB: ``git add`` into a fresh
  repository (median of 3), then a commit, and a checkout away and back. The
  tools take turns in each round, so that a drift of the machine's speed
  during the run moves every tool's figures alike.
* **Small model in a shell loop.** The 784-128-64-10 MLP, saved and committed
  with ``git add`` + ``git commit`` at each of 20 steps: median wall seconds
  per step, and the CPU seconds of every process the step started (steadier
  than wall time on a busy machine), filter server children included.
* **Filter start-up.** Starting the configured ``filter.theta.process`` until it
  has answered git's handshake, in its own process and through a warm filter
  server (docs/filter-server.md).

torch is imported here only, to make the checkpoints. Ratios are from one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _sandbox import sandbox_env
from run import TOOLS, git, measure, setup_repo, tree_bytes

FULL = {
    "width": 2560, "layers": 8, "steps": 10, "small_tensors": 6000, "loop_steps": 20,
    "checkout_runs": 3,
}  # fmt: skip
SCENARIOS = ("training", "small", "loop", "handshake")
QUICK = {
    "width": 256, "layers": 2, "steps": 3, "small_tensors": 300, "loop_steps": 3,
    "checkout_runs": 1,
}  # fmt: skip
LEARNING_RATE = 1e-4  # Adam; a usual rate for a model of this size
WARMUP_STEPS = 5  # so that the optimizer state is not all zeros at the first commit
DELTA_DEPTH = 10  # theta.maxDeltaDepth's default
TARGETS = {"fp32": 0.75, "bf16": 0.45, "fp32 + Adam": 0.85}


# -- checkpoints ----------------------------------------------------------------


def training_checkpoints(directory: Path, width: int, layers: int, steps: int) -> dict:
    """``{variant: [checkpoint after step 1, 2, ...]}``, each saved as ``model.pth``."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        *[
            layer
            for _ in range(layers)
            for layer in (torch.nn.Linear(width, width), torch.nn.GELU())
        ]
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    inputs, targets = torch.randn(64, width), torch.randn(64, width)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()

    for _ in range(WARMUP_STEPS):
        step()
    out: dict[str, list[Path]] = {variant: [] for variant in TARGETS}
    for index in range(steps):
        step()
        weights = model.state_dict()
        states = {
            "fp32": weights,
            "bf16": {name: tensor.to(torch.bfloat16) for name, tensor in weights.items()},
            "fp32 + Adam": {"model": weights, "optimizer": optimizer.state_dict()},
        }
        for variant, state in states.items():
            path = directory / variant.replace(" + ", "-") / str(index) / "model.pth"
            path.parent.mkdir(parents=True)
            torch.save(state, path)
            out[variant].append(path)
    return out


def small_tensor_checkpoint(directory: Path, count: int) -> Path:
    import torch

    generator = torch.Generator().manual_seed(1)
    path = directory / "small-tensors" / "model.pth"
    path.parent.mkdir(parents=True)
    torch.save({f"t{i}": torch.randn(4096, generator=generator) for i in range(count)}, path)
    return path


def mlp_checkpoints(directory: Path, steps: int) -> list[Path]:
    import torch

    torch.manual_seed(2)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, labels = torch.randn(32, 784), torch.randint(0, 10, (32,))
    paths = []
    for index in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
        path = directory / "mlp" / str(index) / "model.pth"
        path.parent.mkdir(parents=True)
        torch.save(model.state_dict(), path)
        paths.append(path)
    return paths


# -- scenarios ------------------------------------------------------------------


@dataclass
class Figures:
    values: dict[str, float] = field(default_factory=dict)


def _repo(tool: str, workdir: Path, name: str) -> tuple[Path, dict[str, str]]:
    home = workdir / f"home-{name}"
    home.mkdir(parents=True)
    env = sandbox_env(home)
    for key, value in (("user.name", "Bench"), ("user.email", "bench@example.invalid")):
        git(env, home, "config", "--global", key, value)
    git(env, home, "config", "--global", "init.defaultBranch", "main")
    repo = workdir / name
    setup_repo(tool, repo, env)
    return repo, env


def training_run(tool: str, checkpoints: list[Path], workdir: Path, rounds: int) -> Figures:
    repo, env = _repo(tool, workdir, "training")
    figures = Figures()
    growth = []
    for index, source in enumerate(checkpoints):
        shutil.copyfile(source, repo / "model.pth")
        before = tree_bytes(repo / ".git")
        git(env, repo, "add", "model.pth")
        git(env, repo, "commit", "-qm", f"step {index}")
        growth.append(tree_bytes(repo / ".git") - before)
    size = checkpoints[0].stat().st_size
    later = statistics.mean(growth[1:]) / size if len(growth) > 1 else growth[0] / size
    first = growth[0] / size
    figures.values["growth per commit"] = later
    figures.values["amortised"] = (first + DELTA_DEPTH * later) / (DELTA_DEPTH + 1)
    back = f"HEAD~{len(checkpoints) - 1}"
    first, last = checkout_seconds(repo, env, [back, "main"], rounds)
    figures.values["checkout first"], figures.values["checkout last"] = first, last
    shutil.rmtree(repo)
    return figures


def checkout_seconds(
    repo: Path, env: dict[str, str], revisions: list[str], rounds: int
) -> list[float]:
    """Median wall seconds of ``git checkout`` of each revision in turn, over ``rounds`` rounds.

    One run on a shared machine varies up to 2x, hence the median. Each
    checkout but the very first also cleans the file it replaces once more:
    git keeps file times in whole seconds, and the previous checkout wrote
    that file in the same second as the index, so git cannot tell from the
    times that it is unchanged. Every tool pays that, as a user's next
    checkout does (unless a command in a later second rewrote the index).
    """
    times: list[list[float]] = [[] for _ in revisions]
    for _ in range(rounds):
        for index, revision in enumerate(revisions):
            times[index].append(measure(["git", "checkout", "-q", revision], repo, env).seconds)
    return [statistics.median(values) for values in times]


def small_tensors(
    tools: list[str], checkpoint: Path, workdir: Path, rounds: int
) -> dict[str, Figures]:
    """Each tool's median seconds of ``git add`` into a fresh repository (one per round;
    the last one's commit is then checked out away and back, ``rounds`` times).

    The rounds alternate between the tools, and so do the checkouts: on a machine
    whose speed drifts over a minute (a shared VM's does, by a third), measuring
    one tool's rounds and then the next's would put the drift into the ratio.
    """
    adds: dict[str, list[float]] = {tool: [] for tool in tools}
    repos: dict[str, tuple[Path, dict[str, str]]] = {}
    for _ in range(rounds):
        for tool in tools:
            place = workdir / tool.replace(" ", "-")
            if tool in repos:
                shutil.rmtree(place)
            repo, env = repos[tool] = _repo(tool, place, "small")
            shutil.copyfile(checkpoint, repo / "model.pth")
            adds[tool].append(measure(["git", "add", "model.pth"], repo, env).seconds)
    for repo, env in repos.values():
        git(env, repo, "commit", "-qm", "small tensors")
        git(env, repo, "rm", "-q", "model.pth")
        git(env, repo, "commit", "-qm", "removed")
    checkouts = interleaved_checkout_seconds(repos, ["HEAD~1", "main"], rounds)
    figures = {}
    for tool, (repo, _env) in repos.items():
        figures[tool] = Figures(
            {"add": statistics.median(adds[tool]), "checkout": checkouts[tool][0]}
        )
        shutil.rmtree(repo)
    return figures


def interleaved_checkout_seconds(
    repos: dict[str, tuple[Path, dict[str, str]]], revisions: list[str], rounds: int
) -> dict[str, list[float]]:
    """:func:`checkout_seconds` of each tool's repository, the tools taking turns in
    each round."""
    times: dict[str, list[list[float]]] = {tool: [[] for _ in revisions] for tool in repos}
    for _ in range(rounds):
        for tool, (repo, env) in repos.items():
            for index, revision in enumerate(revisions):
                checkout = ["git", "checkout", "-q", revision]
                times[tool][index].append(measure(checkout, repo, env).seconds)
    return {tool: [statistics.median(values) for values in times[tool]] for tool in repos}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _served_cpu_seconds(report: Path) -> float:
    """The CPU seconds filter server children reported to ``report`` since the last call."""
    if not report.exists():
        return 0.0
    seconds = sum(float(line.split()[1]) for line in report.read_text().splitlines())
    report.unlink()
    return seconds


def shell_loop(tool: str, checkpoints: list[Path], workdir: Path) -> Figures:
    """Median seconds per step of ``git add`` + ``git commit``, and for theta of
    ``git theta commit`` (which stages in-process); each also as CPU seconds.
    """
    figures = Figures()
    ways = {"per commit": (("add", "model.pth"), ("commit", "-qm", "step"))}
    if tool == "theta":
        ways["per commit (git theta commit)"] = (("theta", "commit", "-m", "step", "model.pth"),)
    for figure, commands in ways.items():
        repo, env = _repo(tool, workdir, f"loop-{len(figures.values)}")
        served = workdir / f"served-{len(figures.values)}"
        env["GIT_THETA_FILTER_USAGE"] = str(served)  # a filter server's child is not our child
        seconds, cpu = [], []
        for source in checkpoints:
            shutil.copyfile(source, repo / "model.pth")  # a fresh mtime, as a training loop's save
            start, start_cpu = time.perf_counter(), _children_cpu_seconds()
            for command in commands:
                git(env, repo, *command)
            seconds.append(time.perf_counter() - start)
            cpu.append(_children_cpu_seconds() - start_cpu + _served_cpu_seconds(served))
        shutil.rmtree(repo)
        figures.values[figure] = statistics.median(seconds)
        figures.values[f"{figure}, CPU"] = statistics.median(cpu)
    return figures


def _packet(text: bytes) -> bytes:
    return b"%04x" % (len(text) + 4) + text


def handshake_seconds(workdir: Path, tries: int = 5) -> dict[str, float]:
    """Median time from starting the configured filter command to its answer to git's
    capabilities: served by its own process (``GIT_THETA_FILTER_SERVER=0``), and by a
    warm filter server (docs/filter-server.md), as git starts it without a terminal."""
    repo, env = _repo("theta", workdir, "handshake")
    command = subprocess.run(
        ["git", "config", "filter.theta.process"], cwd=repo, env=env, capture_output=True
    ).stdout.decode()
    medians = {}
    for mode, setting in (("own process", {"GIT_THETA_FILTER_SERVER": "0"}), ("server", {})):
        run_env = {**env, **setting}
        if mode == "server":
            _handshake(command, repo, run_env)  # starts the server, if none is running
            time.sleep(2)  # for it to import the filter and listen
        medians[mode] = statistics.median(_handshake(command, repo, run_env) for _ in range(tries))
    shutil.rmtree(repo)
    return medians


def _handshake(command: str, repo: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        shell=True,  # as git starts filter.theta.process
        cwd=repo,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # no controlling terminal, as under a scheduler or CI
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(_packet(b"git-filter-client\n") + _packet(b"version=2\n") + b"0000")
    process.stdin.write(_packet(b"capability=clean\n") + _packet(b"capability=smudge\n"))
    process.stdin.write(b"0000")
    process.stdin.flush()
    answer = b""
    while answer.count(b"0000") < 2:  # the version flush, then the capabilities flush
        chunk = process.stdout.read(1)
        if not chunk:
            break
        answer += chunk
    seconds = time.perf_counter() - start
    process.stdin.close()
    process.wait()
    return seconds


# -- the report -----------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(
    results: dict[str, dict[str, Figures]], handshake: dict[str, float] | None, sizes: dict
) -> str:
    tools = [t for t in TOOLS if t in results]
    lines = [
        f"Training run: {sizes['params'] / 1e6:.1f}M parameters, Adam lr {LEARNING_RATE:g}, "
        f"{sizes['steps']} commits, one per step; growth per commit is commits 2-{sizes['steps']}"
        f" as a share of the checkpoint; amortised adds a full object every {DELTA_DEPTH + 1} "
        "commits.",
        "",
        "| scenario | figure | " + " | ".join(tools) + " | theta / git-lfs | theta / git |",
        "|" + " --- |" * (len(tools) + 4),
    ]
    checks: list[tuple[str, float | None, float]] = []

    def row(scenario: str, figure: str, fmt=lambda v: f"{v:.3f}") -> dict[str, float | None]:
        values = {t: results[t].get(scenario, Figures()).values.get(figure) for t in tools}
        if all(value is None for value in values.values()):
            return values  # a scenario left out with --only
        cells = " | ".join("n/a" if values[t] is None else fmt(values[t]) for t in tools)
        theta = values.get("theta")
        lfs, plain = _ratio(theta, values.get("git-lfs")), _ratio(theta, values.get("plain git"))
        lines.append(f"| {scenario} | {figure} | {cells} | {lfs} | {plain} |")
        return values

    def seconds(value: float) -> str:
        # A commit of the small model takes tens of ms: 0.01 s steps would hide a 10% change.
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"

    for variant, limit in TARGETS.items():
        scenario = f"training {variant}"
        row(scenario, "growth per commit", lambda v: f"{v:.3f}×")
        amortised = row(scenario, "amortised", lambda v: f"{v:.3f}×").get("theta")
        checks.append((f"{scenario}: growth per commit (amortised) ≤ {limit}×", amortised, limit))
        for figure in ("checkout first", "checkout last"):
            values = row(scenario, figure, seconds)
            if values.get("git-lfs") and values.get("theta") is not None:
                checks.append(
                    (
                        f"{scenario}: {figure}, theta / git-lfs ≤ 1.0",
                        values["theta"] / values["git-lfs"],
                        1.0,
                    )
                )
    small_scenario = f"{sizes['small_tensors']} tensors of 16 KB"
    small = {figure: row(small_scenario, figure, seconds) for figure in ("add", "checkout")}
    loop_scenario = "MLP 784-128-64-10, add + commit in a loop"
    loop = row(loop_scenario, "per commit", seconds)
    row(loop_scenario, "per commit, CPU", seconds)
    # For reference, not a target: the one-process alternative to the loop.
    row(loop_scenario, "per commit (git theta commit)", seconds)
    row(loop_scenario, "per commit (git theta commit), CPU", seconds)
    for name, values, limit in (
        ("small tensors: add, theta / git-lfs ≤ 1.0", small["add"], 1.0),
        ("small tensors: checkout, theta / git-lfs ≤ 1.5", small["checkout"], 1.5),
        ("shell loop: per commit, theta / git-lfs ≤ 1.5", loop, 1.5),
    ):
        if values.get("git-lfs") and values.get("theta") is not None:
            checks.append((name, values["theta"] / values["git-lfs"], limit))  # type: ignore[operator]
    if handshake is not None:
        checks.append(("filter handshake ≤ 0.060 s", handshake["server"], 0.060))
        checks.append(("filter handshake, own process ≤ 0.060 s", handshake["own process"], 0.060))
        lines += [
            "",
            "Filter start-up to the handshake's answer: "
            f"{handshake['server'] * 1000:.0f} ms served by a warm filter server, "
            f"{handshake['own process'] * 1000:.0f} ms in its own process.",
        ]
    lines.append("")
    lines += ["| target | measured | met |", "| --- | --- | --- |"]
    for name, measured, limit in checks:
        if measured is None:
            continue
        lines.append(f"| {name} | {measured:.3f} | {_met(measured <= limit)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}"
    )
    parser.add_argument("--loop-steps", type=int, default=None, help="steps of the shell loop")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    if args.loop_steps:
        sizes["loop_steps"] = args.loop_steps
    only = set(args.only.split(","))
    have_lfs = subprocess.run(["git", "lfs", "version"], capture_output=True).returncode == 0
    tools = [t for t in args.tools.split(",") if t in TOOLS and (have_lfs or t != "git-lfs")]
    with tempfile.TemporaryDirectory(prefix="theta-bench-storage-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        print("making checkpoints ...", file=sys.stderr)
        sizes["params"] = sizes["layers"] * (sizes["width"] ** 2 + sizes["width"])
        training = (
            training_checkpoints(
                workdir / "checkpoints", sizes["width"], sizes["layers"], sizes["steps"]
            )
            if "training" in only
            else {}
        )
        small = (
            small_tensor_checkpoint(workdir / "checkpoints", sizes["small_tensors"])
            if "small" in only
            else None
        )
        loop = (
            mlp_checkpoints(workdir / "checkpoints", sizes["loop_steps"]) if "loop" in only else []
        )
        results: dict[str, dict[str, Figures]] = {}
        rounds = sizes["checkout_runs"]
        for tool in tools:
            print(f"{tool} ...", file=sys.stderr)
            scratch = workdir / tool.replace(" ", "-")
            results[tool] = {
                f"training {variant}": training_run(
                    tool, paths, scratch / variant.replace(" + ", "-"), rounds
                )
                for variant, paths in training.items()
            }
            if loop:
                results[tool]["MLP 784-128-64-10, add + commit in a loop"] = shell_loop(
                    tool, loop, scratch / "loop"
                )
        if small is not None:
            print("small tensors, the tools taking turns ...", file=sys.stderr)
            scenario = f"{sizes['small_tensors']} tensors of 16 KB"
            for tool, figures in small_tensors(tools, small, workdir / "small", rounds).items():
                results[tool][scenario] = figures
        handshake = handshake_seconds(workdir / "handshake") if "handshake" in only else None
        print(render(results, handshake, sizes), end="")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
