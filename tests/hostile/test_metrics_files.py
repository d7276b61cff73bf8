"""Classes 3 and 4 of docs/security.md: metrics files and .thetaconfig that others committed.

A commit names metrics files (in ``.thetaconfig``, and ``<model>.metrics.json``
beside a model file). The names, the files and ``.thetaconfig`` itself are
the committer's. They may not make theta-log, theta-diff or the API read
outside the repository (through a symlink, ``..``, an absolute path, ``.git``),
block on a FIFO, load more than 1 MiB, or cost more than their size in a
parser (the budgets of ``git_theta_filter/metrics_files.py``).
"""

from __future__ import annotations

import json
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from helpers import enter_git_env, isolated_git_env
from safetensors.numpy import save_file

from git_theta_filter.formats.pickle_scan import MAX_METRIC_SEQUENCE
from git_theta_filter.metrics_files import (
    MAX_INTEGER_DIGITS,
    MAX_METRICS,
    MAX_METRICS_FILE,
    MAX_NAME,
    MAX_NESTING,
    MAX_YAML_SCALARS,
    MetricsFileError,
    parse_metrics_file,
)

MODEL = "model.safetensors"
SECRET = {"secret": 42}


def _write_model(path: Path, value: float) -> None:
    save_file({"w": np.full((4,), value, dtype=np.float32)}, str(path))


@pytest.fixture(scope="module")
def hostile_repo(tmp_path_factory: pytest.TempPathFactory):
    """A repository whose one commit names metrics files outside it in every way there is."""
    root = tmp_path_factory.mktemp("metrics")
    git_env = isolated_git_env(root)
    outside = root / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.json").write_text(json.dumps(SECRET))
    (outside / "dir" / "results.json").write_text(json.dumps({"leak": 7}))
    (outside / "extra.cfg").write_text("[metrics]\n\tfile = included.json\n")
    repo = root / "repo"
    git_env.run("git", "init", "-q", str(repo))
    git_env.theta(repo, "track", "*.safetensors")
    _write_model(repo / MODEL, 1.0)
    (repo / f"{MODEL}.metrics.json").symlink_to(outside / "secret.json")
    (repo / "link.json").symlink_to(outside / "secret.json")
    (repo / "linkdir").symlink_to(outside / "dir")
    (repo / "good.json").write_text(json.dumps({"good": 1}))
    (repo / "included.json").write_text(json.dumps({"included": 1}))
    (repo / "big.json").write_text(json.dumps({"big": 1, "pad": "x" * (2 << 20)}))
    declared = [
        "good.json",
        "link.json",
        "linkdir/results.json",
        f"../{outside.name}/secret.json",
        str(outside / "secret.json"),
        ".git/config",
        "big.json",
    ]
    config = "".join(f"\tfile = {path}\n" for path in declared)
    (repo / ".thetaconfig").write_text(
        f"[metrics]\n{config}[include]\n\tpath = {outside / 'extra.cfg'}\n"
    )
    git_env.git(repo, "add", ".")
    git_env.git(repo, "commit", "-q", "-m", "hostile metrics")
    _write_model(repo / MODEL, 2.0)
    return git_env, repo, outside


EXPECTED_WARNINGS = [
    f"{MODEL}.metrics.json: is a symbolic link",
    "link.json: is a symbolic link",
    "linkdir/results.json: goes through the symbolic link linkdir",
    "secret.json: has an empty, '.' or '..' component",
    "secret.json: is an absolute path",
    ".git/config: is inside .git",
    "big.json: is larger than 1048576 bytes",
]


def test_theta_log_reads_committed_metrics_files_only_inside_the_repository(hostile_repo):
    git_env, repo, _ = hostile_repo
    result = git_env.run("git", "theta-log", "--json", MODEL, cwd=repo, timeout=120)
    (entry,) = json.loads(result.stdout)["entries"]
    stderr = result.stderr.decode()
    assert set(entry["metrics"]) == {"good"}, (entry["metrics"], stderr)
    for warning in EXPECTED_WARNINGS:
        assert warning in stderr, (warning, stderr)


def test_theta_diff_reads_work_tree_metrics_files_never_through_a_symlink(hostile_repo):
    git_env, repo, _ = hostile_repo
    result = git_env.run("git", "theta-diff", "--json", "--all", cwd=repo, timeout=120)
    text = result.stdout.decode()
    stderr = result.stderr.decode()
    assert "secret" not in text and "leak" not in text and "included" not in text, text
    assert '"good"' in text, text
    for warning in EXPECTED_WARNINGS:
        assert warning in stderr, (warning, stderr)


def test_api_history_never_reads_a_metrics_file_outside_the_repository(hostile_repo, monkeypatch):
    import git_theta_filter as gtf

    git_env, repo, _ = hostile_repo
    enter_git_env(monkeypatch, git_env.env)
    with pytest.warns(Warning, match="is a symbolic link"):
        (entry,) = gtf.open(repo).history(MODEL)
    assert entry.metrics == {"good": 1}


def test_thetaconfig_include_is_not_followed(hostile_repo):
    git_env, repo, _ = hostile_repo
    listed = git_env.theta(repo, "metrics", "list").stdout.decode().split()
    assert "good.json" in listed and "included.json" not in listed


def test_theta_diff_does_not_block_on_a_fifo_named_as_a_metrics_file(git_env, repo):
    _write_model(repo / MODEL, 1.0)
    git_env.theta(repo, "metrics", "add", "fifo.json")
    git_env.git(repo, "add", ".")
    git_env.git(repo, "commit", "-q", "-m", "model")
    os.mkfifo(repo / "fifo.json")
    _write_model(repo / MODEL, 2.0)
    result = git_env.run("git", "theta-diff", cwd=repo, timeout=120)
    assert "fifo.json: is not a regular file" in result.stderr.decode()


@pytest.mark.parametrize("target", ["/dev/zero", "outside.cfg"])
def test_a_thetaconfig_symlink_is_never_followed(git_env, repo, tmp_path, target):
    outside = tmp_path / "outside.cfg"
    outside.write_text("[metrics]\n\tfile = leaked.json\n")
    (repo / ".thetaconfig").symlink_to(outside if target == "outside.cfg" else Path(target))
    git_env.git(repo, "add", ".thetaconfig")
    git_env.git(repo, "commit", "-q", "-m", "thetaconfig is a symlink")

    listed = git_env.theta(repo, "metrics", "list", timeout=60)
    assert b"leaked.json" not in listed.stdout
    assert ".thetaconfig ignored: is a symbolic link" in listed.stderr.decode()
    # `metrics add` would write through the link: refused, the target left alone.
    added = git_env.theta(repo, "metrics", "add", "x.json", check=False, timeout=60)
    assert added.returncode != 0 and "is a symbolic link" in added.stderr.decode()
    assert outside.read_text() == "[metrics]\n\tfile = leaked.json\n"
    # The committed blob is a symlink too (120000): with the link gone from the
    # work tree and the index, HEAD's version is refused as well.
    (repo / ".thetaconfig").unlink()
    git_env.git(repo, "rm", "-q", "--cached", ".thetaconfig")
    listed = git_env.theta(repo, "metrics", "list", timeout=60)
    assert b"leaked.json" not in listed.stdout
    assert ".thetaconfig ignored: is a symbolic link" in listed.stderr.decode()


def _laughs(levels: int, width: int) -> bytes:
    lines = [f"l0: &l0 {{{', '.join(f'k{i}: 1' for i in range(width))}}}"]
    for level in range(1, levels):
        refs = ", ".join(f"k{i}: *l{level - 1}" for i in range(width))
        lines.append(f"l{level}: &l{level} {{{refs}}}")
    return ("\n".join(lines) + "\n").encode()


def _toml_dotted(parts: int) -> bytes:
    return ("k" + ".k" * (parts - 1) + " = 1\n").encode()


# Each about 1 KB or less; each would cost far more than its size without its limit.
CRAFTED = {
    "yaml-billion-laughs": ("m.yaml", _laughs(9, 10), "YAML aliases"),
    "yaml-base-60": ("m.yaml", b"x: " + b"1:" * 400 + b"1\n", "a number longer than"),
    "yaml-huge-integer": ("m.yaml", b"x: " + b"9" * 900 + b"\n", "a number longer than"),
    "yaml-deep-nesting": ("m.yaml", b"[" * 1000 + b"]" * 1000, f"deeper than {MAX_NESTING}"),
    "json-deep-nesting": ("m.json", b"[" * 1000 + b"]" * 1000, f"deeper than {MAX_NESTING}"),
    "toml-deep-nesting": ("m.toml", b"x = " + b"[" * 1000, f"deeper than {MAX_NESTING}"),
    "toml-dotted-key": ("m.toml", _toml_dotted(400), f"more than {MAX_NESTING} parts"),
    "toml-dotted-table": ("m.toml", b"[" + _toml_dotted(300)[:-5] + b"]\n", "parts"),
    "json-long-key": ("m.json", b'{"' + b"k" * 600 + b'": 1}', f"longer than {MAX_NAME}"),
    "json-many-metrics": (
        "m.json",
        b"[" + b",".join([b"[" + b",".join([b"1"] * 8) + b"]"] * 8) + b"]",
        None,  # 64 metrics: within budget, for contrast
    ),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_metrics_file_is_refused_within_its_budget(case):
    path, data, reason = CRAFTED[case]
    assert len(data) <= 4096
    tracemalloc.start()
    try:
        if reason is None:
            assert len(parse_metrics_file(path, data)) == 64
        else:
            with pytest.raises(MetricsFileError, match=reason):
                parse_metrics_file(path, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{case}: {peak} bytes for a {len(data)}-byte file"


@pytest.mark.parametrize("suffix", ["json", "toml", "yaml"])
def test_huge_integers_are_refused_even_with_pythons_digit_limit_off(suffix, monkeypatch):
    digits = b"9" * (MAX_INTEGER_DIGITS + 1)
    data = {"json": b"[" + digits + b"]", "toml": b"x = " + digits, "yaml": b"x: " + digits}
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        with pytest.raises(MetricsFileError):
            parse_metrics_file(f"m.{suffix}", data[suffix])
        assert sys.get_int_max_str_digits() == 0  # put back as it was
    finally:
        sys.set_int_max_str_digits(before)


def test_more_metrics_than_the_budget_are_refused():
    data = json.dumps({f"m{i}": i for i in range(MAX_METRICS + 1)}).encode()
    with pytest.raises(MetricsFileError, match=f"more than {MAX_METRICS} metrics"):
        parse_metrics_file("m.json", data)


def test_a_metrics_file_over_its_size_limit_is_refused_before_parsing():
    data = json.dumps({"loss": 0.5, "pad": "x" * MAX_METRICS_FILE}).encode()
    with pytest.raises(
        MetricsFileError, match=f"metrics file m.json: larger than {MAX_METRICS_FILE} bytes"
    ):
        parse_metrics_file("m.json", data)


def test_nesting_past_the_limit_is_refused_well_before_pythons_recursion_limit():
    # 40 levels: deeper than MAX_NESTING, far from the ~1000 that a RecursionError needs.
    data = b"[" * 40 + b"1" + b"]" * 40
    with pytest.raises(MetricsFileError, match=f"m.json: nested deeper than {MAX_NESTING}"):
        parse_metrics_file("m.json", data)


def test_a_metric_name_built_from_short_keys_is_held_to_the_name_limit():
    # Each key is within MAX_NAME; the dotted name joining them is not.
    key = "k" * (MAX_NAME // 2)
    data = json.dumps({key: {key: {key: 1}}}).encode()
    with pytest.raises(MetricsFileError, match=f"m.json: a metric name is longer than {MAX_NAME}"):
        parse_metrics_file("m.json", data)


def test_yaml_with_more_scalars_than_its_budget_is_refused_before_loading():
    # Strings are no metrics, so only the event count can refuse this file.
    data = b"[" + b",".join([b"a"] * (MAX_YAML_SCALARS + 1)) + b"]"
    with pytest.raises(MetricsFileError, match=f"m.yaml: more than {MAX_YAML_SCALARS} YAML"):
        parse_metrics_file("m.yaml", data)


def test_deep_yaml_is_refused_even_where_flattening_would_never_descend():
    # A list longer than MAX_METRIC_SEQUENCE holds ids, not metrics, and is skipped
    # whole; the nesting inside it must still be refused before PyYAML builds it.
    deep = b"[" * (MAX_NESTING + 8) + b"1" + b"]" * (MAX_NESTING + 8)
    data = b"[" + b",".join([deep] + [b"0"] * MAX_METRIC_SEQUENCE) + b"]"
    with pytest.raises(MetricsFileError, match=f"m.yaml: nested deeper than {MAX_NESTING}"):
        parse_metrics_file("m.yaml", data)
