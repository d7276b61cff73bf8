"""git theta-log: metrics and parameter norms over a real history (see theta_history.py)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest
from helpers import remove_local_objects
from theta_history import CHANGED_IN, History, commit, norm, shared_history

from git_theta_filter.stats_cache import CACHE_FILE

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schema"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return shared_history(tmp_path_factory, "theta-log")


@pytest.fixture
def own_history(history: History, tmp_path: Path) -> History:
    """A copy that a test may change."""
    return history.copy(tmp_path / "repo")


def expected_relative_change(history: History, epoch: int) -> float:
    old, new = history.states[epoch - 1], history.states[epoch]
    delta = math.sqrt(sum(norm(new[k].double() - old[k].double()) ** 2 for k in new))
    return delta / math.sqrt(sum(norm(t) ** 2 for t in old.values()))


def test_theta_log_lists_each_model_commit_with_metrics_norms_and_changes(history: History) -> None:
    entries = history.theta_json("log")["entries"]
    assert [e["subject"] for e in entries] == ["epoch 3", "epoch 2", "epoch 1"]
    assert [e["commit"] for e in entries] == [
        history.commits[3],
        history.commits[2],
        history.commits[1],
    ]
    assert [e["date"][:10] for e in entries] == ["2026-01-04", "2026-01-03", "2026-01-02"]
    by_epoch = {e["metrics"]["epoch"]: e for e in entries}
    for epoch, entry in by_epoch.items():
        state = history.states[epoch]
        assert entry["path"] == "model.pth"
        assert entry["norm"] == pytest.approx(
            math.sqrt(sum(norm(t) ** 2 for t in state.values())), rel=1e-9
        )
        assert entry["non_finite"] is False and entry["norms_available"] is True
        assert entry["tensors"] == 4
        # The checkpoint's nested scalars, flattened with dots.
        assert entry["metrics"]["metrics.val_acc"] == pytest.approx(0.5 + 0.1 * epoch)
        assert entry["metrics"]["metrics.train.loss"] == round(1.0 / epoch, 6)
        assert entry["metrics"]["config.lr"] == 0.01 and entry["metrics"]["config.use_amp"] is False
    assert by_epoch[1]["status"] == "added" and by_epoch[1]["relative_change"] is None
    assert by_epoch[1]["tensors_changed"] == 4
    for epoch in (2, 3):
        assert by_epoch[epoch]["tensors_changed"] == len(CHANGED_IN[epoch])
        assert by_epoch[epoch]["relative_change"] == pytest.approx(
            expected_relative_change(history, epoch), rel=1e-9
        )
    # Epoch 2 adds every element of an 8x16 weight by 0.5 (up to float32 rounding).
    assert by_epoch[2]["relative_change"] * by_epoch[1]["norm"] == pytest.approx(
        0.5 * math.sqrt(128), rel=1e-6
    )
    assert by_epoch[3]["relative_change"] * by_epoch[2]["norm"] == pytest.approx(2.0, rel=1e-6)
    # Each commit stores its changed tensors and a new skeleton;
    # the first stores all four tensors too.
    assert by_epoch[1]["new_storage_bytes"] > by_epoch[3]["new_storage_bytes"] > 0


def test_theta_log_reads_metrics_files_declared_and_beside_the_model(history: History) -> None:
    entries = {e["metrics"]["epoch"]: e for e in history.theta_json("log")["entries"]}
    assert "test.bleu" not in entries[1]["metrics"]
    assert entries[2]["metrics"]["test.bleu"] == 21.5  # results.toml, declared in .thetaconfig
    assert entries[3]["metrics"]["test.bleu"] == 24.0
    assert entries[3]["metrics"]["eval.f1"] == 0.75  # model.pth.metrics.json, found by its name
    assert entries[3]["metrics"]["eval.per_class.1"] == 0.8
    assert "eval.f1" not in entries[2]["metrics"]
    config = (history.repo / ".thetaconfig").read_text()
    assert "[metrics]" in config and "file = results.toml" in config
    assert history.run("git", "theta", "metrics", "list").stdout.decode().split() == [
        "results.toml"
    ]


def test_theta_log_best_finds_the_commit_with_the_best_metric(history: History) -> None:
    best = history.theta_ok("log", "--best", "val_acc")
    assert best.split()[0] == history.commits[3]
    assert "metrics.val_acc=0.8" in best and "highest of 3" in best
    # Losses are minimised by default; --max and --min override.
    assert history.theta_ok("log", "--best", "loss").split()[0] == history.commits[3]
    assert history.theta_ok("log", "--best", "loss", "--max").split()[0] == history.commits[1]
    result = history.theta_json("log", "--best", "val_acc", "--min")["best"]
    assert result["metric"] == "metrics.val_acc" and result["direction"] == "min"
    assert result["value"] == pytest.approx(0.6) and result["entry"]["commit"] == history.commits[1]


def test_theta_log_metric_columns_accept_unambiguous_suffixes(history: History) -> None:
    out = history.theta_ok("log", "--metric", "val_acc", "--metric", "epoch")
    header, *rows = out.splitlines()
    assert header.split()[:5] == ["commit", "date", "subject", "metrics.val_acc", "epoch"]
    assert [row.split()[4:6] for row in rows] == [["0.8", "3"], ["0.7", "2"], ["0.6", "1"]]
    json_out = history.theta_json("log", "--metric", "f1")
    assert [e["metrics"] for e in json_out["entries"]] == [
        {"eval.f1": 0.75},
        {"eval.f1": None},
        {"eval.f1": None},
    ]
    missing = history.theta("log", "--metric", "nope")
    assert missing.returncode == 1 and "no metric named 'nope'" in missing.stderr


def test_theta_log_revision_ranges_counts_and_paths(history: History) -> None:
    def subjects(*args: str) -> list[str]:
        return [e["subject"] for e in history.theta_json("log", *args)["entries"]]

    assert subjects("-n", "2") == ["epoch 3", "epoch 2"]
    assert subjects(f"{history.commits[1]}..{history.commits[3]}") == ["epoch 3", "epoch 2"]
    assert subjects("HEAD~1") == ["epoch 2", "epoch 1"]
    assert subjects("^HEAD~1", "HEAD") == ["epoch 3"]
    assert subjects("HEAD", "--", "model.pth") == ["epoch 3", "epoch 2", "epoch 1"]
    assert subjects("model.pth") == ["epoch 3", "epoch 2", "epoch 1"]  # a path, without `--`
    assert subjects("HEAD~2..HEAD~1") == ["epoch 2"]


@pytest.mark.parametrize(
    "args, message",
    [
        (("no-such-branch",), "ambiguous argument 'no-such-branch'"),
        (("no-such-branch", "--"), "bad revision 'no-such-branch'"),
        (("HEAD..nope",), "ambiguous argument 'HEAD..nope'"),
        (("--", "missing.pth"), "pathspec 'missing.pth' did not match any model file"),
        (("--", "results.toml"), "pathspec 'results.toml' did not match any model file"),
    ],
)
def test_theta_log_bad_revisions_and_untracked_paths_exit_128(
    history: History, args: tuple[str, ...], message: str
) -> None:
    result = history.theta("log", *args)
    assert result.returncode == 128
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr


def test_theta_log_console_script_and_alias_exit_128_like_git(history: History) -> None:
    for command in (("git", "theta-log"), ("git", "theta", "log")):
        result = history.run(*command, "HEAD", "--", "missing.pth", check=False)
        assert result.returncode == 128 and result.stdout == b""
        assert result.stderr.decode().splitlines() == [
            "git-theta: error: pathspec 'missing.pth' did not match any model file tracked by "
            "git-theta; see `git theta ls-files`"
        ]
    assert history.run("git", "theta", "log", "-n", "1", "--json").stdout.count(b'"commit"') == 1


def test_theta_log_warm_cache_reads_no_payload_and_missing_objects_are_reported(
    own_history: History,
) -> None:
    history = own_history
    first = history.theta_json("log")["entries"]
    assert (history.repo / ".git" / "theta" / "stats" / CACHE_FILE).is_file()
    remove_local_objects(history.repo)
    # Every statistic is cached, so the store is not needed at all.
    warm = history.theta("log", "--json")
    assert json.loads(warm.stdout)["entries"] == first and warm.stderr == ""
    # Without the cache, the metrics still show and the norms are marked unavailable.
    for path in (history.repo / ".git" / "theta" / "stats").iterdir():
        path.unlink()
    cold = history.theta("log")
    lines = cold.stdout.splitlines()
    assert all("n/a" in line for line in lines[1:]) and len(lines) == 4
    assert "0.8" in lines[1]  # val_acc still shows
    assert "norms unavailable for 3 commit(s)" in cold.stderr and "git theta fetch" in cold.stderr
    entries = history.theta_json("log")["entries"]
    assert [e["norms_available"] for e in entries] == [False] * 3 and entries[0]["norm"] is None


def test_theta_log_never_imports_torch(history: History, tmp_path: Path) -> None:
    poisoned = tmp_path / "poison" / "torch"
    poisoned.mkdir(parents=True)
    (poisoned / "__init__.py").write_text(
        "raise ImportError('git theta-log must not import torch')\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(poisoned.parent), os.environ.get("PYTHONPATH", "")])}
    history.run("git", "theta-log", env=env)
    history.run("git", "theta-diff", "HEAD~2", "--json", env=env)


def test_theta_log_json_matches_the_documented_schema(history: History) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMA_DIR / "theta-log.schema.json").read_text())
    jsonschema.validate(history.theta_json("log"), schema)
    jsonschema.validate(history.theta_json("log", "--metric", "f1"), schema)
    jsonschema.validate(history.theta_json("log", "--best", "f1"), schema)


def test_theta_log_skips_commits_that_do_not_touch_model_files(own_history: History) -> None:
    history = own_history
    (history.repo / "notes.txt").write_text("no model here\n")
    commit(history.git_env, history.repo, "notes", "notes.txt", day=9)
    entries = history.theta_json("log")["entries"]
    assert [e["subject"] for e in entries] == ["epoch 3", "epoch 2", "epoch 1"]
    history.run("git", "rm", "-q", "model.pth")
    commit(history.git_env, history.repo, "drop the model", day=10)
    entries = history.theta_json("log")["entries"]
    assert entries[0]["subject"] == "drop the model" and entries[0]["status"] == "removed"
    assert entries[0]["tensors_changed"] == 4 and entries[0]["norm"] is None


def test_theta_log_plot_names_the_missing_extra(history: History, tmp_path: Path) -> None:
    poisoned = tmp_path / "poison" / "matplotlib"
    poisoned.mkdir(parents=True)
    (poisoned / "__init__.py").write_text("raise ImportError('not installed')\n")
    target = tmp_path / "history.png"
    env = {"PYTHONPATH": str(poisoned.parent)}
    result = history.run("git", "theta-log", "--plot", str(target), check=False, env=env)
    assert result.returncode == 1 and result.stdout == b"" and not target.exists()
    assert result.stderr.decode().splitlines() == [
        "git-theta: error: --plot needs matplotlib, which is not installed; "
        "pip install 'git-theta-filter[plot]'"
    ]
    wrong = history.theta("log", "--plot", str(tmp_path / "history.txt"))
    assert wrong.returncode == 1 and "must end in .png or .svg" in wrong.stderr


def test_theta_log_plot_draws_metrics_and_relative_change(history: History, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    for name, magic in (("history.png", b"\x89PNG"), ("history.svg", b"<?xml")):
        result = history.theta("log", "--metric", "val_acc", "--plot", str(tmp_path / name))
        assert result.returncode == 0 and (tmp_path / name).read_bytes().startswith(magic)
        assert f"wrote {tmp_path / name}" in result.stderr


def test_theta_log_on_a_terminal_draws_sparklines_in_colour(history: History) -> None:
    leader, follower = os.openpty()
    try:
        history.git_env.run(
            "git", "theta-log", "--metric", "val_acc", cwd=history.repo
        )  # warm the cache
        process = subprocess.run(
            ["git", "theta-log", "--metric", "val_acc"],
            cwd=history.repo,
            env=history.git_env.env,
            stdout=follower,
            stderr=subprocess.PIPE,
            check=True,
        )
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
    text = output.decode()
    assert process.stderr == b""
    assert "\x1b[33m" in text  # coloured commit ids
    # Oldest commit on the left: val_acc rises 0.6, 0.7, 0.8.
    assert any(
        line.split()[:2] == ["metrics.val_acc", "▁▄█"] for line in _plain(text).splitlines()
    ), _plain(text)


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text).replace("\r", "")
