"""A model file whose pickle runs code on load: the filter stores it, and nothing ever runs it.

Each hostile file is a real torch zip (written by torch.save) whose data.pkl
calls os.system or builtins.exec on load to create a marker file. Every git
and git-theta operation must leave the marker absent; a plain unpickle at the
end must create it, which proves the payload was live all along.
"""

from __future__ import annotations

import builtins
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


@pytest.fixture
def hostile(git_env, repo: Path, tmp_path: Path) -> tuple:
    markers = {"shell.pth": tmp_path / "pwned-by-shell", "exec.pth": tmp_path / "pwned-by-exec"}
    state = mlp_checkpoint(0, (4, 8, 2))
    digests = {
        "shell.pth": save(
            {"model": state, "epoch": 1, "payload": RunsShell(markers["shell.pth"])},
            repo / "shell.pth",
        ),
        "exec.pth": save(
            {"payload": RunsPython(markers["exec.pth"]), "model": state}, repo / "exec.pth"
        ),
    }
    return git_env, repo, markers, digests, state


def assert_no_marker(markers: dict[str, Path], when: str) -> None:
    ran = [str(m) for m in markers.values() if m.exists()]
    assert not ran, f"{when}: the hostile pickle ran and created {ran}"


def test_hostile_pickle_is_stored_and_checked_out_without_running(hostile: tuple) -> None:
    git_env, repo, markers, digests, state = hostile
    add = git_env.run("git", "add", "shell.pth", "exec.pth", cwd=repo)
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
        assert not any("payload" in t.name for t in manifest.tensors)
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
