"""The Lightning and 🤗 Transformers callbacks, with the real libraries, end to end.

Each framework's example (examples/train_lightning.py, examples/train_transformers.py)
trains a tiny model in a fresh repository and prints its validation metrics as
it goes; theta-log must then show one row per commit with exactly those
metrics, and --best must pick the commit with the best of them. Nothing is
downloaded: the models are built from small configs, the data is synthetic.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import GitEnv
from helpers import enter_git_env, read_manifest, sha256_file

import git_theta_filter as gtf

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def run_example(git_env: GitEnv, tmp_path: Path, name: str, *args: str) -> tuple[Path, str]:
    repo = tmp_path / "run"
    result = git_env.run(
        sys.executable, str(EXAMPLES / name), "--repo", str(repo), *args, cwd=tmp_path, env=OFFLINE
    )
    return repo, result.stdout.decode() + result.stderr.decode()


def log_entries(git_env: GitEnv, repo: Path, path: str) -> list[dict]:
    return json.loads(git_env.theta(repo, "log", "--json", "--", path).stdout)["entries"]


def best_commit(git_env: GitEnv, repo: Path, metric: str, path: str) -> str:
    best = git_env.theta(repo, "log", "--best", metric, "--json", "--", path).stdout
    return json.loads(best)["best"]["entry"]["commit"]


def test_lightning_callback_commits_each_epoch_and_best_finds_the_lowest_val_loss(
    git_env: GitEnv, tmp_path: Path
) -> None:
    repo, output = run_example(git_env, tmp_path, "train_lightning.py", "--epochs", "3")
    printed = {
        int(epoch): (float(loss), float(acc))
        for epoch, loss, acc in re.findall(
            r"^epoch (\d+): val_loss (\S+) val_acc (\S+)$", output, re.M
        )
    }
    assert sorted(printed) == [0, 1, 2], output
    entries = log_entries(git_env, repo, "model.ckpt")
    assert [e["subject"].split(",")[0] for e in entries] == ["epoch 2", "epoch 1", "epoch 0"]
    for entry in entries:
        epoch = entry["metrics"]["epoch"]  # the Lightning checkpoint's own scalar
        assert (entry["metrics"]["val_loss"], entry["metrics"]["val_acc"]) == printed[epoch]
        assert "train_loss" in entry["metrics"] and entry["norms_available"]
    lowest = min(printed, key=lambda epoch: printed[epoch][0])
    expected = next(e["commit"] for e in entries if e["metrics"]["epoch"] == lowest)
    assert best_commit(git_env, repo, "val_loss", "model.ckpt") == expected
    # The example reloads the best weights from the store and validates them again.
    again = float(re.search(r"validate again to val_loss (\S+)", output).group(1))
    assert again == pytest.approx(printed[lowest][0], rel=1e-6)
    # Three commits, each timed; .gitattributes came with the first.
    assert len(re.findall(r"^git-theta: committed model\.ckpt as \w{7} ", output, re.M)) == 3
    assert "git-theta: 3 commit(s); training waited" in output
    assert "/model.ckpt filter=theta" in (repo / ".gitattributes").read_text()
    assert git_env.git(repo, "status", "--porcelain") == ""
    manifest = read_manifest(git_env, repo, "HEAD:model.ckpt")
    assert manifest.sha256 == sha256_file(repo / "model.ckpt")


def test_transformers_callback_commits_each_saved_folder_and_best_finds_the_lowest_eval_loss(
    git_env: GitEnv, tmp_path: Path
) -> None:
    repo, output = run_example(
        git_env, tmp_path, "train_transformers.py", "--steps", "12", "--save-steps", "4"
    )
    printed = {
        int(step): float(loss)
        for step, loss in re.findall(r"^step (\d+): eval_loss (\S+) eval_accuracy", output, re.M)
    }
    assert sorted(printed) == [4, 8, 12], output
    model = "checkpoint/model.safetensors"
    entries = log_entries(git_env, repo, model)
    assert [e["subject"] for e in entries] == ["step 12", "step 8", "step 4"]
    for entry in entries:
        metrics = entry["metrics"]
        assert metrics["eval_loss"] == printed[metrics["step"]]
        assert {"loss", "learning_rate", "epoch", "eval_accuracy"} <= set(metrics)
    lowest = min(printed, key=printed.__getitem__)
    expected = next(e["commit"] for e in entries if e["metrics"]["step"] == lowest)
    assert best_commit(git_env, repo, "eval_loss", model) == expected
    # The whole folder is committed: model, optimizer and scheduler through the filter.
    committed = set(git_env.git(repo, "ls-files", "checkpoint").split())
    assert {
        model,
        f"{model}.metrics.json",
        "checkpoint/optimizer.pt",
        "checkpoint/scheduler.pt",
        "checkpoint/trainer_state.json",
    } <= committed
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt"):
        attribute = git_env.git(repo, "check-attr", "filter", "--", f"checkpoint/{name}")
        assert attribute.strip().endswith("filter: theta"), attribute
        manifest = read_manifest(git_env, repo, f"HEAD:checkpoint/{name}")
        assert manifest.sha256 == sha256_file(repo / "checkpoint" / name)
    # Optimizer state is no part of θ: optimizer.pt has no norm.
    (optimizer, *_) = log_entries(git_env, repo, "checkpoint/optimizer.pt")
    assert optimizer["theta_tensors"] == 0 and optimizer["norm"] is None
    assert git_env.git(repo, "status", "--porcelain") == ""


# -- Lightning's triggers, in this process ------------------------------------------------------
def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def in_process(git_env: GitEnv, repo: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``repo``, with this process's environment the isolated one (the API runs git)."""
    enter_git_env(monkeypatch, {**git_env.env, **OFFLINE})
    return repo


def fit(repo: Path, tmp_path: Path, epochs: int, *callbacks) -> object:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    example = load_example("train_lightning")
    pl.seed_everything(0, verbose=False)
    generator = torch.Generator().manual_seed(0)
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=list(callbacks),
        default_root_dir=str(tmp_path / "logs"),
        accelerator="cpu",
        logger=False,
        enable_checkpointing=any(type(c).__name__ == "ModelCheckpoint" for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    train = DataLoader(example.synthetic_data(256, generator), batch_size=64)  # 4 steps an epoch
    trainer.fit(example.Classifier(), train, DataLoader(example.synthetic_data(64, generator)))
    return trainer


def test_lightning_callback_every_n_train_steps(in_process: Path, tmp_path: Path) -> None:
    from git_theta_filter.integrations.lightning import ThetaCheckpoint

    callback = ThetaCheckpoint("runs/steps.ckpt", repo=in_process, every_n_train_steps=3)
    fit(in_process, tmp_path, 2, callback)
    assert [record.step for record in callback.commits] == [3, 6]
    assert all(r.write_seconds > 0 and r.commit_seconds > 0 for r in callback.commits)
    subjects = gtf.open(in_process).history("runs/steps.ckpt")
    assert [entry.subject for entry in subjects] == ["epoch 1, step 6", "epoch 0, step 3"]


def test_lightning_callback_commits_what_model_checkpoint_saved_once_per_state(
    in_process: Path, tmp_path: Path
) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from git_theta_filter.integrations.lightning import ThetaCheckpoint

    saved = tmp_path / "saved"
    checkpoint = ModelCheckpoint(dirpath=saved, save_top_k=-1, every_n_epochs=1)
    # Both triggers fall on each epoch's end: one commit per state, not two.
    callback = ThetaCheckpoint(
        "model.ckpt",
        repo=in_process,
        every_n_epochs=1,
        on_model_checkpoint=True,
        message="{epoch}: val_loss {val_loss:.4f}, {missing}",
    )
    fit(in_process, tmp_path, 3, callback, checkpoint)
    assert [record.step for record in callback.commits] == [4, 8, 12]
    repo = gtf.open(in_process)
    history = repo.history("model.ckpt")
    assert [entry.subject.split(":")[0] for entry in history] == ["2", "1", "0"]
    assert all(entry.subject.endswith(", nan") for entry in history)  # an unknown field
    # Each commit holds the weights ModelCheckpoint saved at that step.
    for entry, step in zip(history, (12, 8, 4), strict=True):
        (file,) = saved.glob(f"*step={step}.ckpt")
        expected = torch.load(file, weights_only=False)["state_dict"]
        state = repo.load_state_dict("model.ckpt", rev=entry.commit, prefix="state_dict.")
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[name], expected[name]) for name in expected)


def test_lightning_callback_on_model_checkpoint_alone_commits_its_saves(
    in_process: Path, tmp_path: Path
) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from git_theta_filter.integrations.lightning import ThetaCheckpoint

    # Saves every second epoch only: the commits follow it.
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "saved", save_top_k=-1, every_n_epochs=2)
    callback = ThetaCheckpoint("model.ckpt", repo=in_process, on_model_checkpoint=True)
    fit(in_process, tmp_path, 4, callback, checkpoint)
    assert [record.step for record in callback.commits] == [8, 16]


def test_lightning_callback_without_the_filter_fails_before_training(
    in_process: Path, tmp_path: Path, git_env: GitEnv
) -> None:
    from git_theta_filter.integrations.lightning import ThetaCheckpoint

    git_env.theta(in_process, "uninstall", "--global")
    callback = ThetaCheckpoint("model.ckpt", repo=in_process)
    with pytest.raises(gtf.FilterNotInstalledError):
        fit(in_process, tmp_path, 1, callback)
    assert callback.commits == [] and not (in_process / "model.ckpt").exists()
