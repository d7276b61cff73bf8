"""git theta-log: which columns it shows, git's revision grammar across branches, and plots.

The history: checkpoints with Adam's state (so optimizer hyperparameters are
scalars of every version), in two model files, on three branches::

    main   epoch 1 ── epoch 2
                          ├── exp-a: epoch 3 (val.acc 0.70)
                          └── exp-b: epoch 3 (val.acc 0.90) ── epoch 4 (val.acc 0.80)
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pygit2
import pytest
import torch
from conftest import GitEnv
from theta_history import History, commit, make_git_env, new_repo

import git_theta_filter.theta_log as theta_log_module
from git_theta_filter.plot import RELATIVE_CHANGE, plot_panels
from git_theta_filter.revisions import Pathspec, parse_range, ref_tips
from git_theta_filter.theta_log import theta_log

VAL_ACC = {"main-1": 0.5, "main-2": 0.6, "exp-a-3": 0.7, "exp-b-3": 0.9, "exp-b-4": 0.8}
METRIC_LIKE = {"epoch", "train.loss", "val.acc", "val.loss"}


def checkpoint(step: int, val_acc: float, lr: float = 0.01) -> tuple[dict, dict]:
    """A model and its Adam state after ``step`` steps; the metrics; and a second file."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    head = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=lr)
    for _ in range(step):
        head(model(torch.randn(5, 4))).sum().backward()
        optimizer.step()
    scalars = {
        "epoch": step,
        "train": {"loss": round(1.0 / step, 6)},
        "val": {"acc": val_acc, "loss": round(1.0 - val_acc, 6)},
    }
    main = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **scalars}
    return main, {"head": head.state_dict(), "epoch": step}


def save_and_commit(history: History, name: str, step: int, day: int, lr: float = 0.01) -> str:
    main, head = checkpoint(step, VAL_ACC.get(name, 0.5), lr)
    torch.save(main, history.repo / "model.pth")
    torch.save(head, history.repo / "head.pth")
    return commit(history.git_env, history.repo, name, "model.pth", "head.pth", day=day)


@pytest.fixture(scope="module")
def experiments(tmp_path_factory: pytest.TempPathFactory) -> History:
    root = tmp_path_factory.mktemp("experiments")
    git_env = make_git_env(root)
    history = History(git_env, new_repo(git_env, root / "repo"))
    history.commits = {
        "main-1": save_and_commit(history, "main-1", 1, day=2),
        "main-2": save_and_commit(history, "main-2", 2, day=3),
    }
    for branch, steps in (("exp-a", (3,)), ("exp-b", (3, 4))):
        history.run("git", "checkout", "-q", "-b", branch, "main")
        for step in steps:
            name = f"{branch}-{step}"
            history.commits[name] = save_and_commit(history, name, step, day=step + 2)
    history.run("git", "checkout", "-q", "main")
    return history


def git_of(history: History) -> pygit2.Repository:
    return pygit2.Repository(str(history.repo))


def with_env(history: History, **env: str) -> History:
    git_env = GitEnv(history.git_env.home, {**history.git_env.env, **env})
    return dataclasses.replace(history, git_env=git_env)


def metric_columns(table: str) -> list[str]:
    """The metric names in a theta-log table's header."""
    header = table.splitlines()[0].split()
    return header[header.index("subject") + 1 : header.index("‖θ‖")]


def subjects_by_branch(history: History, *args: str) -> dict[str, str]:
    entries = history.theta_json("log", *args, "--", "model.pth")["entries"]
    return {entry["subject"]: entry["branch"] for entry in entries}


def test_theta_log_default_columns_are_the_metrics_not_optimizer_settings(
    experiments: History,
) -> None:
    result = experiments.theta("log")
    assert result.returncode == 0 and result.stderr == ""
    columns = metric_columns(result.stdout)
    # The changing metric-like names, held-out results first; never Adam's settings
    # (amsgrad, betas, capturable...) or its parameter ids.
    assert columns[:2] == ["val.acc", "val.loss"] and set(columns) == METRIC_LIKE, columns
    header = result.stdout.splitlines()[0].split()
    assert header[2] == "path"  # two model files
    assert all(len(line) <= 120 for line in result.stdout.splitlines())


def test_theta_log_one_row_shows_the_metric_like_names(experiments: History) -> None:
    result = experiments.theta("log", "-n", "1", "--", "model.pth")
    assert set(metric_columns(result.stdout)) == METRIC_LIKE
    assert len(result.stdout.splitlines()) == 2 and result.stderr == ""


def test_theta_log_shows_an_optimizer_setting_only_when_it_changes(
    experiments: History, tmp_path: Path
) -> None:
    history = with_env(experiments.copy(tmp_path / "repo"), COLUMNS="200")
    save_and_commit(history, "lower the lr", 3, day=9, lr=0.001)
    columns = metric_columns(history.theta_ok("log", "-n", "2", "--", "model.pth"))
    # After the metrics it changes with, as a setting.
    assert columns[-1] == "optimizer.param_groups.0.lr"
    assert not any("betas" in name or "params" in name for name in columns)


def test_theta_log_fits_the_terminal_width_and_metric_overrides_it(
    experiments: History,
) -> None:
    narrow = with_env(experiments, COLUMNS="90")
    result = narrow.theta("log", "--", "model.pth")
    columns = metric_columns(result.stdout)
    assert 1 <= len(columns) < len(METRIC_LIKE) and columns[0] == "val.acc"
    assert all(len(line) <= 90 for line in result.stdout.splitlines())
    assert f"showing {len(columns)} of 4 metrics" in result.stderr
    assert "choose with --metric" in result.stderr
    chosen = ["epoch", "train.loss", "val.loss", "val.acc"]
    explicit = narrow.theta("log", *[f"--metric={name}" for name in chosen], "--", "model.pth")
    assert metric_columns(explicit.stdout) == chosen and explicit.stderr == ""


def test_theta_log_several_revisions_name_the_branch_of_each_row(experiments: History) -> None:
    assert subjects_by_branch(experiments, "main", "exp-a", "exp-b") == {
        "exp-b-4": "exp-b",
        "exp-b-3": "exp-b",
        "exp-a-3": "exp-a",
        "main-2": "main",
        "main-1": "main",
    }
    table = experiments.theta_ok("log", "main", "exp-b", "--", "model.pth").splitlines()
    assert table[0].split()[:4] == ["commit", "date", "branch", "subject"]
    assert [line.split()[2:4] for line in table[1:]] == [
        ["exp-b", "exp-b-4"],
        ["exp-b", "exp-b-3"],
        ["main", "main-2"],
        ["main", "main-1"],
    ]
    # One revision: no branch column, and no branch in the JSON.
    assert "branch" not in experiments.theta_ok("log", "exp-b").splitlines()[0].split()
    assert set(subjects_by_branch(experiments, "exp-b").values()) == {None}


def test_theta_log_all_and_branches_follow_gits_grammar(experiments: History) -> None:
    everything = subjects_by_branch(experiments, "--all")
    # HEAD's branch comes first, so the shared history is main's.
    assert everything["main-1"] == everything["main-2"] == "main"
    assert everything["exp-a-3"] == "exp-a" and everything["exp-b-4"] == "exp-b"
    assert subjects_by_branch(experiments, "--branches") == everything
    # `--branches exp-a` is every branch and the revision exp-a, which, named first, is
    # the name of the history it shares.
    named_first = subjects_by_branch(experiments, "--branches", "exp-a")
    assert named_first == {**everything, "main-1": "exp-a", "main-2": "exp-a"}
    experiments_only = subjects_by_branch(experiments, "--branches=exp-*")
    assert set(experiments_only) == set(everything)
    assert experiments_only["main-2"] == "exp-a"  # reached first from exp-a, as named
    assert subjects_by_branch(experiments, "--branches=exp-b") == {}  # exp-b/* matches nothing
    assert set(subjects_by_branch(experiments, "--branches=exp-b*")) == {
        "exp-b-4",
        "exp-b-3",
        "main-2",
        "main-1",
    }
    names = [name for name, _ in ref_tips(git_of(experiments), True)]
    assert names == ["main", "exp-a", "exp-b"]


def test_theta_log_best_across_branches_names_the_branch(experiments: History) -> None:
    best = experiments.theta_ok("log", "--all", "--best", "val.acc", "--", "model.pth").split()
    assert best[0] == experiments.commits["exp-b-3"] and best[2] == "exp-b"
    assert "val.acc=0.9" in best and "(highest of 5)" in " ".join(best)
    lowest_loss = experiments.theta_json("log", "--branches", "--best", "val.loss")["best"]
    assert lowest_loss["direction"] == "min" and lowest_loss["entry"]["branch"] == "exp-b"
    assert lowest_loss["entry"]["commit"] == experiments.commits["exp-b-3"]
    # On main alone, the best is main's own.
    main_only = experiments.theta_ok("log", "--best", "val.acc", "--", "model.pth").split()
    assert main_only[0] == experiments.commits["main-2"]


def log_entries(history: History, *revisions: str, path: str | None = None, all_refs=False):
    git = git_of(history)
    return theta_log(
        git,
        parse_range(git, list(revisions), ref_tips(git, True) if all_refs else None),
        Pathspec([path] if path else [], history.repo, history.repo),
        [],
        lambda message: None,
    )


def test_theta_log_plot_draws_one_line_per_branch_and_per_file(
    experiments: History, tmp_path: Path
) -> None:
    entries = log_entries(experiments, path="model.pth", all_refs=True)
    labels, panels = plot_panels(entries, ["val.acc"])
    assert len(labels) == len(set(labels)) == 5  # one x position per commit
    acc, change = panels
    assert change.name == RELATIVE_CHANGE
    assert set(acc.lines) == {"main", "exp-a", "exp-b"}
    by_x = {labels[x]: y for x, y in acc.lines["exp-b"]}
    # exp-b's line runs through the history it shares with main.
    assert [
        by_x[experiments.commits[n][:7]] for n in ("main-1", "main-2", "exp-b-3", "exp-b-4")
    ] == [
        0.5,
        0.6,
        0.9,
        0.8,
    ]
    assert len(acc.lines["main"]) == 2 and len(acc.lines["exp-a"]) == 3
    both_files = log_entries(experiments, "main")
    labels, panels = plot_panels(both_files, ["epoch"])
    assert len(labels) == 2  # two commits, though four rows
    assert {name: [y for _, y in points] for name, points in panels[0].lines.items()} == {
        "model.pth": [1, 2],
        "head.pth": [1, 2],
    }
    pytest.importorskip("matplotlib")
    target = tmp_path / "branches.png"
    result = experiments.theta("log", "--all", "--plot", str(target), "--", "model.pth")
    assert result.returncode == 0 and target.read_bytes().startswith(b"\x89PNG")
    # Another suffix is refused before any work, rather than left to matplotlib's guess.
    other = tmp_path / "branches.pdf"
    result = experiments.theta("log", "--plot", str(other), "--", "model.pth")
    assert result.returncode != 0 and not other.exists()
    assert "the file name must end in .png or .svg" in result.stderr


def test_theta_log_max_count_reads_only_the_commits_it_shows(
    experiments: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"changed": 0, "diffs": 0}

    def counting(name: str, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(
        theta_log_module, "_changed_blobs", counting("changed", theta_log_module._changed_blobs)
    )
    monkeypatch.setattr(
        theta_log_module, "diff_manifests", counting("diffs", theta_log_module.diff_manifests)
    )
    git = git_of(experiments)
    walk = parse_range(git, ["exp-b"])
    everything = Pathspec([], experiments.repo, experiments.repo)
    entries = theta_log(git, walk, everything, [], lambda m: None, max_count=1)
    assert [e.subject for e in entries] == ["exp-b-4", "exp-b-4"]
    assert calls == {"changed": 1, "diffs": 2}  # one commit read, its two files compared
    calls.update(changed=0, diffs=0)
    assert len(theta_log(git, walk, everything, [], lambda m: None)) == 8
    assert calls == {"changed": 5, "diffs": 8}


def test_theta_log_norms_use_the_model_alone(experiments: History) -> None:
    (entry, *_) = experiments.theta_json("log", "-n", "1", "--", "model.pth")["entries"]
    main, _ = checkpoint(2, 0.6)
    weights = torch.cat([t.double().flatten() for t in main["model"].values()])
    assert entry["norm"] == pytest.approx(torch.linalg.vector_norm(weights).item(), rel=1e-9)
    assert (entry["theta_tensors_changed"], entry["theta_tensors"]) == (2, 2)
    assert not math.isnan(entry["relative_change"])
