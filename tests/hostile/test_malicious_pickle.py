"""A model file whose pickle runs code on load: the filter stores it, and nothing ever runs it.

Each hostile file is a real torch zip (written by torch.save) whose data.pkl
calls os.system or builtins.exec on load to create a marker file. Every git
and git-theta operation must leave the marker absent; a plain unpickle at the
end must create it, which proves the payload was live all along.
"""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    assert_manifest,
    assert_status_clean,
    commit_all,
    mlp_checkpoint,
    read_manifest,
    save,
    sha256_file,
    store_oids,
)

from git_theta_filter.cli import COMMANDS

# Unpickles data.pkl with pickle itself, as torch.load(weights_only=False) does,
# with torch's own globals stubbed out so that torch need not be imported.
UNSAFE_LOAD = """
import io, pickle, sys, zipfile

class Loader(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith("torch"):
            return lambda *args, **kwargs: None
        return super().find_class(module, name)

    def persistent_load(self, pid):
        return None

with zipfile.ZipFile(sys.argv[1]) as archive:
    name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
    Loader(io.BytesIO(archive.read(name))).load()
"""


class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RunsPython:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class RunsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class RunsSubprocess:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.check_call, (["touch", str(self.marker)],))


# The global each payload names, as `git theta fsck --check-pickles` must list it
# (os.system pickles as posix.system on Linux).
PAYLOAD_GLOBALS = {
    "shell.pth": ["posix.system"],
    "exec.pth": ["builtins.exec"],
    "eval.pth": ["builtins.eval"],
    "subprocess.pth": ["subprocess.check_call"],
}


@pytest.fixture
def hostile(git_env, repo: Path, tmp_path: Path) -> tuple:
    markers = {name: tmp_path / f"pwned-by-{name}" for name in PAYLOAD_GLOBALS}
    state = mlp_checkpoint(0, (4, 8, 2))
    digests = {
        "shell.pth": save(
            {"model": state, "epoch": 1, "payload": RunsShell(markers["shell.pth"])},
            repo / "shell.pth",
        ),
        "exec.pth": save(
            {"payload": RunsPython(markers["exec.pth"]), "model": state}, repo / "exec.pth"
        ),
        "eval.pth": save(
            {"model": state, "hook": RunsEval(markers["eval.pth"])}, repo / "eval.pth"
        ),
        "subprocess.pth": save(
            {"model": state, "nested": {"deeper": [RunsSubprocess(markers["subprocess.pth"])]}},
            repo / "subprocess.pth",
        ),
    }
    return git_env, repo, markers, digests, state


def assert_no_marker(markers: dict[str, Path], when: str) -> None:
    ran = [str(m) for m in markers.values() if m.exists()]
    assert not ran, f"{when}: the hostile pickle ran and created {ran}"


def test_hostile_pickle_is_stored_and_checked_out_without_running(hostile: tuple) -> None:
    git_env, repo, markers, digests, state = hostile
    add = git_env.run("git", "add", *digests, cwd=repo)
    assert_no_marker(markers, "git add")
    # Stored per tensor like any checkpoint, not refused and not opaque.
    assert "warning" not in add.stderr.decode()
    for name in digests:
        manifest = read_manifest(git_env, repo, f":{name}")
        assert_manifest(
            manifest,
            format="torch-zip",
            file=repo / name,
            tensors={f"model.{k}": ("F32", tuple(v.shape)) for k, v in state.items()},
        )
        assert not any(t.name.startswith(("payload", "hook", "nested")) for t in manifest.tensors)
    git_env.git(repo, "commit", "-qm", "hostile")
    assert_no_marker(markers, "git commit")

    for name in digests:
        (repo / name).unlink()
    git_env.git(repo, "checkout", "--", ".")
    assert {name: sha256_file(repo / name) for name in digests} == digests
    assert_status_clean(git_env, repo)
    assert_no_marker(markers, "checkout")

    for command in (["ls-files"], ["fsck", "--all"], ["du"]):
        git_env.theta(repo, *command)
        assert_no_marker(markers, f"git theta {' '.join(command)}")
    git_env.git(repo, "log", "-p", "--no-ext-diff")
    git_env.git(repo, "show", "HEAD:shell.pth")
    assert_no_marker(markers, "git log -p")

    # Control: an ordinary unpickle of the checked-out bytes does run the payload.
    for name, marker in markers.items():
        subprocess.run(
            [sys.executable, "-c", UNSAFE_LOAD, str(repo / name)], capture_output=True, check=True
        )
        assert marker.exists(), f"{name}: the payload is not live, so this test proves nothing"


def test_hostile_pickle_in_a_fine_tune_commit_dedups_and_stays_inert(hostile: tuple) -> None:
    git_env, repo, markers, digests, state = hostile
    commit_all(git_env, repo, "shell.pth", "exec.pth", message="hostile")
    before = store_oids(repo)
    changed = {k: v.clone() for k, v in state.items()}
    changed["2.bias"] += 1
    save(
        {"model": changed, "epoch": 2, "payload": RunsShell(markers["shell.pth"])},
        repo / "shell.pth",
    )
    commit_all(git_env, repo, "shell.pth", message="hostile v2")
    assert len(store_oids(repo) - before) == 2  # the changed bias and the new skeleton
    git_env.git(repo, "checkout", "-q", "HEAD~1")
    assert sha256_file(repo / "shell.pth") == digests["shell.pth"]
    assert_no_marker(markers, "history")


def test_hostile_legacy_pickle_is_stored_opaque_without_running(
    git_env, repo: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned-legacy"
    torch.save(
        {"w": torch.ones(3), "payload": RunsShell(marker)},
        repo / "legacy.pth",
        _use_new_zipfile_serialization=False,
    )
    digest = sha256_file(repo / "legacy.pth")
    add = git_env.run("git", "add", "legacy.pth", cwd=repo)
    assert "git-theta: warning: legacy.pth: " in add.stderr.decode()
    assert read_manifest(git_env, repo, ":legacy.pth").format == "opaque"
    (repo / "legacy.pth").unlink()
    git_env.git(repo, "checkout", "--", "legacy.pth")
    assert sha256_file(repo / "legacy.pth") == digest
    assert not marker.exists()


def test_theta_log_and_theta_diff_never_run_a_hostile_pickle(hostile: tuple) -> None:
    git_env, repo, markers, digests, state = hostile
    commit_all(git_env, repo, *digests, message="hostile")
    changed = {k: v + 1 for k, v in state.items()}
    save(
        {"model": changed, "epoch": 2, "payload": RunsShell(markers["shell.pth"])},
        repo / "shell.pth",
    )
    save({"model": changed, "hook": RunsEval(markers["eval.pth"])}, repo / "eval.pth")
    git_env.git(repo, "add", "eval.pth")
    commands = [
        ["theta-log"],
        ["theta-log", "--json", "--metric", "epoch"],
        ["theta-diff"],  # work tree: shell.pth is cleaned for the comparison
        ["theta-diff", "--cached", "--json"],
        ["theta-diff", "HEAD", "--all"],
        ["theta", "log"],
        ["theta", "diff", "--md"],
    ]
    for command in commands:
        result = git_env.run("git", *command, cwd=repo)
        assert_no_marker(markers, f"git {' '.join(command)}")
        assert result.stdout, f"git {' '.join(command)} printed nothing"
    git_env.git(repo, "diff", "HEAD")
    assert_no_marker(markers, "git diff")


def test_fsck_check_pickles_lists_the_globals_a_hostile_pickle_would_call(hostile: tuple) -> None:
    git_env, repo, markers, digests, state = hostile
    save({"model": state, "epoch": 1}, repo / "clean.pth")
    commit_all(git_env, repo, *digests, "clean.pth", message="hostile")
    result = git_env.run("git", "theta", "fsck", "--check-pickles", cwd=repo, check=False)
    assert_no_marker(markers, "git theta fsck --check-pickles")
    assert result.returncode == 1
    blobs = {
        name: git_env.git(repo, "rev-parse", f"HEAD:{name}").strip()
        for name in [*digests, "clean.pth"]
    }
    lines = result.stdout.decode().splitlines()
    assert lines[:-1] == [
        f"pickle {name} (blob {blobs[name][:12]}): {', '.join(found)}"
        for name, found in sorted(PAYLOAD_GLOBALS.items())
    ]
    assert lines[-1].endswith(
        " 0 corrupt, 0 missing; 5 file versions checked for pickles, 4 flagged"
    )
    assert "do not torch.load(weights_only=False)" in result.stderr.decode()

    report = json.loads(
        git_env.run(
            "git", "theta", "fsck", "--check-pickles", "--json", cwd=repo, check=False
        ).stdout
    )
    assert report["ok"] is True  # the objects are fine; the pickles are the finding
    assert {p["path"]: p["foreign_globals"] for p in report["pickles"]} == {
        **PAYLOAD_GLOBALS,
        "clean.pth": [],
    }
    assert all(p["unchecked"] is None and p["blob"] == blobs[p["path"]] for p in report["pickles"])

    git_env.git(repo, "rm", "-q", *digests)
    git_env.git(repo, "commit", "-qm", "only the clean file")
    clean = git_env.run("git", "theta", "fsck", "--check-pickles", cwd=repo)
    assert (
        clean.stdout.decode()
        .splitlines()[-1]
        .endswith("; 1 file versions checked for pickles, 0 flagged")
    )
    # The hostile versions are still in history.
    history = git_env.run("git", "theta", "fsck", "--check-pickles", "--all", cwd=repo, check=False)
    assert history.returncode == 1 and history.stdout.decode().count("pickle ") == 4
    assert_no_marker(markers, "git theta fsck --check-pickles --all")


def test_fsck_check_pickles_flags_a_legacy_pickle_as_unchecked(
    git_env, repo: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned-legacy"
    torch.save(
        {"w": torch.ones(3), "payload": RunsShell(marker)},
        repo / "legacy.pth",
        _use_new_zipfile_serialization=False,
    )
    commit_all(git_env, repo, "legacy.pth", message="legacy")
    result = git_env.run("git", "theta", "fsck", "--check-pickles", cwd=repo, check=False)
    assert result.returncode == 1
    blob = git_env.git(repo, "rev-parse", "HEAD:legacy.pth").strip()
    assert (
        f"pickle legacy.pth (blob {blob[:12]}): unchecked: a bare pickle stream "
        "(e.g. torch's legacy format), stored opaque"
    ) in result.stdout.decode().splitlines()
    assert not marker.exists()


@pytest.mark.skipif("merge" not in COMMANDS, reason="`git theta merge` is not built yet")
def test_tensor_merge_never_runs_a_hostile_pickle(hostile: tuple) -> None:
    git_env, repo, markers, digests, state = hostile
    commit_all(git_env, repo, *digests, message="hostile base")
    git_env.git(repo, "checkout", "-qb", "other")
    ours = {k: v.clone() for k, v in state.items()}
    ours["0.weight"] += 1
    save(
        {"model": ours, "epoch": 1, "payload": RunsShell(markers["shell.pth"])}, repo / "shell.pth"
    )
    commit_all(git_env, repo, "shell.pth", message="change 0.weight")
    git_env.git(repo, "checkout", "-q", "main")
    theirs = {k: v.clone() for k, v in state.items()}
    theirs["2.bias"] += 1
    save(
        {"model": theirs, "epoch": 1, "payload": RunsShell(markers["shell.pth"])},
        repo / "shell.pth",
    )
    commit_all(git_env, repo, "shell.pth", message="change 2.bias")
    merge = git_env.run("git", "merge", "--no-edit", "other", cwd=repo, check=False)
    assert_no_marker(markers, "git merge through the theta merge driver")
    assert merge.returncode == 0, merge.stderr.decode()
    merged = {t.name: t.oid for t in read_manifest(git_env, repo, "HEAD:shell.pth").tensors}
    ours_oids = {t.name: t.oid for t in read_manifest(git_env, repo, "other:shell.pth").tensors}
    theirs_oids = {t.name: t.oid for t in read_manifest(git_env, repo, "HEAD~1:shell.pth").tensors}
    assert merged["model.0.weight"] == ours_oids["model.0.weight"]
    assert merged["model.2.bias"] == theirs_oids["model.2.bias"]
    assert_status_clean(git_env, repo)
    assert_no_marker(markers, "checkout of the merge")
