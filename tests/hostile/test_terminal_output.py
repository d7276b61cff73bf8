"""Class 8 of docs/security.md: names from a repository reach the terminal with control
characters escaped; ``--json`` keeps them exact.

A file name, tensor names, metric names and commit subjects carry escape
sequences (clear the screen, hide text, set the title, a hyperlink), a
carriage return, a newline that would forge an output line, and a
right-to-left override. Every human output path must show them escaped: the
tables of theta-log, theta-diff, ls-files; fsck, du, gc, metrics list;
warnings and errors; the filter's and the merge driver's messages.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_repo, isolated_git_env
from safetensors.numpy import save_file

from git_theta_filter.terminal import escape_output, printable

MODEL = "evil\x1b[31m\u202e\r.safetensors"
HIDDEN = "w\x1b[8mhidden\x1b]8;;http://x.invalid\x07link"
FORGED = "n\nforged: 0 modified"
METRIC = "acc\x1b[2J"
OTHER_METRIC = "loss\r"
SUBJECT = "epoch \x1b[2J\x1b[Hcleared"
METRICS_FILE = "m\x1b[5m.json"


def _save(path: Path, value: float) -> None:
    save_file(
        {
            HIDDEN: np.full((4,), value, dtype=np.float32),
            FORGED: np.full((3,), -value, dtype=np.float32),
        },
        str(path),
    )


@pytest.fixture(scope="module")
def hostile_names(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("names")
    git_env = isolated_git_env(root)
    repo = root / "repo"
    git_env.run("git", "init", "-q", str(repo))
    git_env.theta(repo, "track", "*.safetensors")
    git_env.theta(repo, "metrics", "add", METRICS_FILE)
    (repo / METRICS_FILE).write_text("{not json")
    for epoch in (1, 2):
        _save(repo / MODEL, float(epoch))
        metrics = {METRIC: 0.5 + epoch / 10, OTHER_METRIC: 1.0 / epoch}
        (repo / f"{MODEL}.metrics.json").write_text(json.dumps(metrics))
        git_env.git(repo, "add", ".")
        git_env.git(repo, "commit", "-q", "-m", f"{SUBJECT}{epoch}")
    return git_env, repo


def _assert_escaped(output: bytes, context: object) -> str:
    text = output.decode("utf-8", "surrogateescape")
    raw = sorted({c for c in text if not c.isprintable() and c != "\n"})
    assert raw == [], f"{context}: raw control characters {raw!r} in:\n{text}"
    return text


@pytest.mark.parametrize(
    "command, shows",
    [
        (["git", "theta-log"], [METRIC, OTHER_METRIC, SUBJECT]),
        (["git", "theta-log", "--best", METRIC], [MODEL, METRIC, SUBJECT]),
        (["git", "theta-log", "--metric", "no-such-metric"], [METRIC]),
        (["git", "theta-log", "--", "untracked\x1b[31m.safetensors"], ["untracked\x1b[31m"]),
        (["git", "theta-diff", "HEAD~1", "HEAD"], [MODEL, HIDDEN, FORGED, METRIC]),
        (["git", "theta-diff", "--all", "HEAD~1", "HEAD"], [MODEL, HIDDEN, FORGED, METRIC]),
        (["git", "theta-diff", "--stat", "HEAD~1", "HEAD"], [MODEL]),
        (["git", "theta-diff", "--md", "HEAD~1", "HEAD"], [MODEL, HIDDEN, FORGED, METRIC]),
        (["git", "theta", "ls-files"], [MODEL]),
        (["git", "theta", "metrics", "list"], [METRICS_FILE]),
    ],
    ids=[
        "theta-log",
        "theta-log-best",
        "theta-log-unknown-metric",
        "theta-log-untracked-path",
        "theta-diff",
        "theta-diff-all",
        "theta-diff-stat",
        "theta-diff-md",
        "ls-files",
        "metrics-list",
    ],
)
def test_human_output_escapes_control_characters_in_names(hostile_names, command, shows):
    git_env, repo = hostile_names
    result = git_env.run(*command, cwd=repo, check=False, timeout=300)
    shown = _assert_escaped(result.stdout, command) + _assert_escaped(result.stderr, command)
    for name in shows:  # shown escaped, not dropped
        assert printable(name) in shown, (name, shown)
    # A warning names the declared metrics file that is not valid JSON, escaped too.
    if command[1] == "theta-log" and len(command) == 2:
        assert printable(METRICS_FILE) in shown, shown


def test_fsck_names_a_missing_objects_path_escaped(hostile_names, tmp_path):
    git_env, repo = hostile_names
    clone = tmp_path / "clone"
    git_env.run("git", "clone", "-q", str(repo), str(clone), env={"GIT_THETA_SKIP_SMUDGE": "1"})
    result = git_env.theta(clone, "fsck", check=False)
    err = _assert_escaped(result.stdout + result.stderr, "fsck")
    assert result.returncode != 0 and printable(MODEL) in err, err


def test_the_filters_warning_names_an_opaque_file_escaped(hostile_names, tmp_path):
    git_env, repo = hostile_names
    work = copy_repo(repo, tmp_path / "work")
    broken = "broken\x1b]0;title\x07.safetensors"
    (work / broken).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    result = git_env.run("git", "add", "--", broken, cwd=work)
    err = _assert_escaped(result.stderr, "git add")
    assert printable(broken) in err, err


def test_the_merge_drivers_conflict_table_escapes_tensor_names(hostile_names, tmp_path):
    git_env, repo = hostile_names
    work = copy_repo(repo, tmp_path / "merge")
    git_env.git(work, "checkout", "-q", "-b", "other")
    _save(work / MODEL, 30.0)
    git_env.git(work, "commit", "-q", "-am", "other side")
    git_env.git(work, "checkout", "-q", "main")
    _save(work / MODEL, 40.0)
    git_env.git(work, "commit", "-q", "-am", "this side")
    result = git_env.run("git", "merge", "other", cwd=work, check=False)
    # git's own lines ("Auto-merging <path>") are git's; ours are checked.
    ours = b"\n".join(
        line
        for line in (result.stdout + result.stderr).splitlines()
        if not line.startswith((b"Auto-merging", b"CONFLICT", b"Automatic merge"))
    )
    err = _assert_escaped(ours, "git merge")
    assert "in conflict" in err and printable(HIDDEN) in err, err
    # The suggested commands quote the path for the shell.
    assert "git add -- '" in err, err


def test_json_output_keeps_names_exact(hostile_names):
    git_env, repo = hostile_names
    log = json.loads(git_env.run("git", "theta-log", "--json", cwd=repo).stdout)
    entry = log["entries"][0]
    assert entry["path"] == MODEL and entry["subject"] == f"{SUBJECT}2"
    assert set(entry["metrics"]) == {METRIC, OTHER_METRIC}
    diff = json.loads(git_env.run("git", "theta-diff", "--json", "HEAD~1", "HEAD", cwd=repo).stdout)
    names = {tensor["name"] for file in diff["files"] for tensor in file["tensors"]}
    assert names == {HIDDEN, FORGED}
    assert {file["path"] for file in diff["files"]} == {MODEL}


@pytest.mark.parametrize(
    "text, shown",
    [
        ("plain ‖θ‖ mödel", "plain ‖θ‖ mödel"),
        ("a\x1b[31mb", "a\\x1b[31mb"),
        ("tab\there", "tab\\there"),
        ("new\nline\r", "new\\nline\\r"),
        ("rtl\u202eoverride", "rtl\\u202eoverride"),
        ("bad byte \udcff", "bad byte \\xff"),
        ("c1 \x9b31m", "c1 \\x9b31m"),
    ],
)
def test_printable_escapes_every_control_character(text, shown):
    assert printable(text) == shown


def test_escaped_streams_keep_newlines_and_only_our_own_colours():
    ours = "\x1b[1mcommit\x1b[0m  \x1b[33mabc\x1b[0m\n"
    assert escape_output(ours, keep_colour=True) == ours
    assert escape_output(ours, keep_colour=False) == ours.replace("\x1b", "\\x1b")
    assert escape_output("x\x1b[2Jy\x1b]0;t\x07\n", keep_colour=True) == (
        "x\\x1b[2Jy\\x1b]0;t\\x07\n"
    )


def test_a_coloured_table_escapes_names_so_that_its_colours_are_the_only_ones():
    """On a terminal the stream keeps our colour codes: the names must be escaped before."""
    from git_theta_filter.cli._format import Colour, Styled, table_lines

    colour = Colour()
    colour.enabled = True
    lines = table_lines(["tensor", "status"], [[HIDDEN, Styled("modified", "yellow")]], colour)
    text = "\n".join(lines)
    assert printable(HIDDEN) in text
    assert escape_output(text, keep_colour=True) == text  # only our own codes remain
    assert "\x1b[8m" not in text.replace("\\x1b[8m", "")


# matplotlib reads text between two $ as mathtext: these metric names (under the
# 256-character limit) sent its parser into a RecursionError and a ValueError.
MATHTEXT_NAMES = ("$" + "{" * 120 + "x" + "}" * 120 + "$", "$" + "x^" * 120 + "x$")


def test_theta_log_plots_metric_names_as_text_never_as_mathtext(tmp_path):
    pytest.importorskip("matplotlib")
    git_env = isolated_git_env(tmp_path / "home")
    repo = tmp_path / "repo"
    git_env.run("git", "init", "-q", str(repo))
    git_env.theta(repo, "track", "*.safetensors")
    for epoch in (1, 2):
        save_file({"w": np.full((4,), epoch, dtype=np.float32)}, str(repo / "m$x.safetensors"))
        metrics = {name: epoch / 10 for name in MATHTEXT_NAMES}
        (repo / "m$x.safetensors.metrics.json").write_text(json.dumps(metrics))
        git_env.git(repo, "add", ".")
        git_env.git(repo, "commit", "-q", "-m", f"epoch {epoch}")
    target = tmp_path / "history.png"
    result = git_env.run("git", "theta-log", "--plot", str(target), cwd=repo, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert target.read_bytes().startswith(b"\x89PNG")


def test_huge_metric_values_neither_fail_theta_diff_nor_the_sparklines(tmp_path):
    """An integer of 4300 digits, which a metrics file may hold, is no metric: the difference
    of two (4301 digits) failed theta-diff under Python's digit limit, and their floats
    the plot. The span of 1.7e308 and -1.7e308 overflowed the terminal's sparklines."""
    git_env = isolated_git_env(tmp_path / "home")
    repo = tmp_path / "repo"
    git_env.run("git", "init", "-q", str(repo))
    git_env.theta(repo, "track", "*.safetensors")
    huge = int("9" * 4300)
    for epoch, (ids, loss) in enumerate([(-huge, 1.7e308), (huge, -1.7e308)]):
        save_file({"w": np.full((4,), epoch, dtype=np.float32)}, str(repo / "m.safetensors"))
        metrics = {"ids": ids, "loss": loss}
        (repo / "m.safetensors.metrics.json").write_text(json.dumps(metrics))
        git_env.git(repo, "add", ".")
        git_env.git(repo, "commit", "-q", "-m", f"epoch {epoch}")
    for json_flag in ([], ["--json"]):
        diff = git_env.run("git", "theta-diff", *json_flag, "HEAD~1", "HEAD", cwd=repo)
        assert b"loss" in diff.stdout and b"ids" not in diff.stdout
    leader, follower = os.openpty()  # sparklines are drawn on a terminal only
    try:
        shown = subprocess.run(
            ["git", "theta-log", "--metric", "loss"],
            cwd=repo,
            env=git_env.env,
            stdout=follower,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert shown.returncode == 0, shown.stderr.decode()
