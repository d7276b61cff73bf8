"""Class 3 of docs/security.md: files in the work tree that a commit made symbolic links.

A collaborator can commit ``.gitattributes`` or ``<model>.metrics.json`` as a
symbolic link to anywhere (``../../.bashrc``, a FIFO, ``/dev/zero``); a
checkout makes the link. git itself ignores a ``.gitattributes`` that is a
link. Ours may neither read through such a link (a FIFO blocks, a device
never ends) nor write through it (the file it names is outside the repository).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import enter_git_env

OUTSIDE_TEXT = "the user's own file, outside the repository\n"


@pytest.fixture
def linked_attributes(git_env, tmp_path):
    """A clone whose committed .gitattributes is a link to a file outside it."""
    outside = tmp_path / "outside.txt"
    outside.write_text(OUTSIDE_TEXT)
    origin = tmp_path / "origin"
    git_env.run("git", "init", "-q", str(origin))
    (origin / ".gitattributes").symlink_to(outside)
    git_env.git(origin, "add", ".gitattributes")
    git_env.git(origin, "commit", "-q", "-m", "attributes are a link")
    clone = tmp_path / "clone"
    git_env.run("git", "clone", "-q", str(origin), str(clone))
    assert (clone / ".gitattributes").is_symlink()
    return clone, outside


@pytest.mark.parametrize(
    "command", [["track", "*.ckpt"], ["untrack", "*.ckpt"]], ids=["track", "untrack"]
)
def test_track_never_writes_through_a_committed_gitattributes_link(
    git_env, linked_attributes, command
):
    clone, outside = linked_attributes
    result = git_env.theta(clone, *command, check=False, timeout=60)
    assert result.returncode != 0
    assert ".gitattributes: is a symbolic link" in result.stderr.decode()
    assert outside.read_text() == OUTSIDE_TEXT


@pytest.fixture
def fifo(tmp_path):
    """A FIFO; whatever still waits to read it when the test ends is let go."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    yield path
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # ENXIO: no reader waits
        pass


def test_a_gitattributes_link_to_a_fifo_is_never_read(git_env, linked_attributes, fifo):
    """git ignores the link; the hooks' check whether the repository uses Git LFS (at a
    clean, in pre-push, in the post-* scripts), track's listing and migrate never open it."""
    clone, _ = linked_attributes
    (clone / ".gitattributes").unlink()
    (clone / ".gitattributes").symlink_to(fifo)
    # The filter's route comes from elsewhere: the user's info/attributes.
    (clone / ".git" / "info" / "attributes").write_text("*.pt filter=theta -text\n")
    (clone / "model.pt").write_bytes(b"not a checkpoint")
    git_env.git(clone, "add", "model.pt", timeout=60)
    git_env.theta(clone, "hook", "pre-push", "origin", "unused", timeout=60)
    git_env.theta(clone, "hook", "post-checkout", "0" * 40, "0" * 40, "1", timeout=60)
    # Commands that take their patterns from the file refuse it, by name.
    for command in (["track"], ["migrate", "info", "--no-estimate"]):
        refused = git_env.theta(clone, *command, check=False, timeout=60)
        assert ".gitattributes: is a symbolic link" in refused.stderr.decode(), command


def test_commit_checkpoint_never_writes_metrics_through_a_committed_link(
    git_env, repo, tmp_path, monkeypatch
):
    import torch

    import git_theta_filter as gtf

    outside = tmp_path / "outside.txt"
    outside.write_text(OUTSIDE_TEXT)
    (repo / "model.pt.metrics.json").symlink_to(outside)
    git_env.git(repo, "add", "model.pt.metrics.json")
    git_env.git(repo, "commit", "-q", "-m", "metrics are a link")
    enter_git_env(monkeypatch, git_env.env)

    gtf.open(repo).commit_checkpoint(
        {"w": torch.zeros(2)}, "model.pt", message="epoch 1", metrics={"loss": 0.5}
    )
    assert outside.read_text() == OUTSIDE_TEXT
    metrics = repo / "model.pt.metrics.json"
    assert not metrics.is_symlink() and json.loads(metrics.read_text()) == {"loss": 0.5}
    assert git_env.git(repo, "ls-files", "-s", "model.pt.metrics.json").startswith("100644")


def test_one_metrics_file_declared_many_times_is_read_once(tmp_path):
    from git_theta_filter.metrics import collect_metrics

    reads: list[str] = []

    def read(path: str) -> bytes | None:
        reads.append(path)
        return json.dumps({"acc": len(reads)}).encode() if path != "b.json" else b'{"b": 1}'

    declared = ["a.json", "b.json"] * 50_000 + ["a.json"]
    metrics = collect_metrics("model.pt", {}, read, declared, lambda message: pytest.fail(message))
    # Each file once, in the order of its last declaration: the later one still wins.
    assert reads == ["model.pt.metrics.json", "b.json", "a.json"]
    assert metrics == {"acc": 3, "b": 1}


@pytest.fixture
def linked_folder(git_env, repo, tmp_path):
    """``repo`` whose committed folder ``ckpt`` is a link to a folder outside it, which
    holds the user's own file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.pt").write_text(OUTSIDE_TEXT)
    (repo / "ckpt").symlink_to(outside)
    git_env.git(repo, "add", "ckpt")
    git_env.git(repo, "commit", "-q", "-m", "ckpt is a link")
    return repo, outside


def test_the_api_never_writes_through_a_committed_folder_link(git_env, linked_folder, monkeypatch):
    import torch

    import git_theta_filter as gtf
    from git_theta_filter.api import UnsafeWorkTreePathError

    repo, outside = linked_folder
    enter_git_env(monkeypatch, git_env.env)
    api = gtf.open(repo)
    with pytest.raises(UnsafeWorkTreePathError, match="ckpt/model.pt: goes through the symbolic"):
        api.commit_checkpoint({"w": torch.zeros(2)}, "ckpt/model.pt", message="m")
    with pytest.raises(UnsafeWorkTreePathError, match="goes through the symbolic link ckpt"):
        api.commit_files(["ckpt/model.pt"], "m", metrics={"loss": 0.5})
    # An older commit had a real folder there: restoring its model writes into the link's place.
    (repo / "ckpt").unlink()
    api.commit_checkpoint({"w": torch.ones(2)}, "ckpt/model.pt", message="real folder")
    git_env.git(repo, "rm", "-rq", "ckpt")
    (repo / "ckpt").symlink_to(outside)
    git_env.git(repo, "add", "ckpt")
    git_env.git(repo, "commit", "-q", "-m", "ckpt is a link again")
    with pytest.raises(UnsafeWorkTreePathError, match="goes through the symbolic link ckpt"):
        api.restore("ckpt/model.pt", rev="HEAD~1")
    # A committed link at the model file itself: cleaning would commit the file it names.
    (repo / "model.pt").symlink_to(outside / "model.pt")
    with pytest.raises(UnsafeWorkTreePathError, match="model.pt: is a symbolic link"):
        api.commit_files(["model.pt"], "m")
    assert sorted(p.name for p in outside.iterdir()) == ["model.pt"]
    assert (outside / "model.pt").read_text() == OUTSIDE_TEXT


def test_the_transformers_callback_never_mirrors_into_a_committed_folder_link(
    git_env, linked_folder, tmp_path, monkeypatch
):
    """The callback empties its folder before linking the new checkpoint in: through a
    committed link, that deleted the user's files outside the repository."""
    pytest.importorskip("transformers")

    from git_theta_filter.api import UnsafeWorkTreePathError
    from git_theta_filter.integrations.transformers import ThetaCallback

    repo, outside = linked_folder
    saved = tmp_path / "out" / "checkpoint-7"
    saved.mkdir(parents=True)
    (saved / "trainer_state.json").write_text("{}")
    enter_git_env(monkeypatch, git_env.env)
    callback = ThetaCallback("ckpt", repo=repo)
    args = SimpleNamespace(output_dir=str(tmp_path / "out"))
    state = SimpleNamespace(is_world_process_zero=True, global_step=7, epoch=1.0, log_history=[])
    with pytest.raises(UnsafeWorkTreePathError, match="ckpt: is a symbolic link"):
        callback.on_save(args, state, SimpleNamespace())
    assert sorted(p.name for p in outside.iterdir()) == ["model.pt"]
    assert callback.commits == []


def test_the_lightning_callback_never_saves_through_a_committed_link(
    git_env, repo, tmp_path, monkeypatch
):
    """Lightning's save_checkpoint opens its path for writing, following a link."""
    pytest.importorskip("lightning")
    from git_theta_filter.api import UnsafeWorkTreePathError
    from git_theta_filter.integrations.lightning import ThetaCheckpoint

    outside = tmp_path / "outside.txt"
    outside.write_text(OUTSIDE_TEXT)
    (repo / "model.ckpt").symlink_to(outside)
    git_env.git(repo, "add", "model.ckpt")
    git_env.git(repo, "commit", "-q", "-m", "model.ckpt is a link")
    enter_git_env(monkeypatch, git_env.env)
    trainer = type("Trainer", (), {"is_global_zero": True})()
    with pytest.raises(UnsafeWorkTreePathError, match="model.ckpt: is a symbolic link"):
        ThetaCheckpoint("model.ckpt", repo=repo).setup(trainer, None, "fit")
    assert outside.read_text() == OUTSIDE_TEXT


def test_the_lightning_callback_never_saves_through_a_link_made_during_training(
    git_env, repo, tmp_path, monkeypatch
):
    """A checkout during training can put a link where the checkpoint file was, after
    setup() checked it: each save checks again."""
    pytest.importorskip("lightning")
    from git_theta_filter.api import UnsafeWorkTreePathError
    from git_theta_filter.integrations.lightning import ThetaCheckpoint

    outside = tmp_path / "outside.txt"
    outside.write_text(OUTSIDE_TEXT)
    enter_git_env(monkeypatch, git_env.env)

    def save_checkpoint(path: str, weights_only: bool = False) -> None:
        Path(path).write_text("a checkpoint")  # Lightning opens the path for writing

    trainer = SimpleNamespace(
        is_global_zero=True,
        sanity_checking=False,
        global_step=1,
        current_epoch=0,
        callback_metrics={},
        save_checkpoint=save_checkpoint,
    )
    callback = ThetaCheckpoint("model.ckpt", repo=repo)
    callback.setup(trainer, None, "fit")
    (repo / "model.ckpt").symlink_to(outside)
    with pytest.raises(UnsafeWorkTreePathError, match="model.ckpt: is a symbolic link"):
        callback.on_train_epoch_end(trainer, None)
    assert outside.read_text() == OUTSIDE_TEXT


def test_the_transformers_mirror_replaces_a_committed_link_inside_its_folder(tmp_path):
    """A link the commit put inside the callback's folder is removed, not filled."""
    pytest.importorskip("transformers")
    from git_theta_filter.integrations.transformers import _mirror

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept.txt").write_text(OUTSIDE_TEXT)
    source = tmp_path / "checkpoint-1"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "scaler.pt").write_text("new")
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "sub").symlink_to(outside)
    _mirror(source, target)
    assert sorted(p.name for p in outside.iterdir()) == ["kept.txt"]
    assert not (target / "sub").is_symlink() and (target / "sub" / "scaler.pt").read_text() == "new"


def test_an_absolute_path_to_a_committed_link_is_the_link_not_its_target(
    git_env, repo, monkeypatch
):
    """As a relative path does: the link is replaced, the file it names left as it was."""
    import torch

    import git_theta_filter as gtf

    enter_git_env(monkeypatch, git_env.env)
    api = gtf.open(repo)
    api.commit_checkpoint({"w": torch.zeros(2)}, "other.pt", message="other")
    before = (repo / "other.pt").read_bytes()
    (repo / "model.pt").symlink_to("other.pt")
    git_env.git(repo, "add", "model.pt")
    git_env.git(repo, "commit", "-q", "-m", "model.pt is a link")
    api.commit_checkpoint({"w": torch.ones(2)}, repo / "model.pt", message="model")
    assert (repo / "other.pt").read_bytes() == before
    assert not (repo / "model.pt").is_symlink()
    assert git_env.git(repo, "ls-files", "-s", "model.pt").startswith("100644")
