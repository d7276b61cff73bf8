"""The framework callbacks' helpers: messages, logged numbers, and mirroring a checkpoint folder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import enter_git_env

from git_theta_filter.integrations._committer import format_message, scalar_metrics


def test_scalar_metrics_keeps_numbers_and_one_element_tensors() -> None:
    logged = {
        "loss": torch.tensor(0.25),
        "acc": np.float32(0.5),
        "step": 7,
        "done": True,
        "vector": torch.ones(3),
        "name": "run-1",
    }
    assert scalar_metrics(logged) == {"loss": 0.25, "acc": 0.5, "step": 7, "done": True}


def test_format_message_fields_and_a_missing_metric() -> None:
    metrics = {"val_loss": 0.123456, "val/acc": 0.9, "epoch": 2}
    assert (
        format_message("e{epoch} s{step} {val_loss:.3f} [{metrics}]", 40, 2, metrics)
        == "e2 s40 0.123 [epoch=2 val/acc=0.9 val_loss=0.1235]"
    )
    assert format_message("{nope:.2f}", 1, None, {}) == "nan"
    assert math.isnan(float(format_message("{nope}", 1, None, {})))


def test_transformers_latest_metrics_merge_training_and_evaluation_logs() -> None:
    pytest.importorskip("transformers")
    from git_theta_filter.integrations.transformers import latest_metrics

    history = [
        {"loss": 0.9, "learning_rate": 0.01, "epoch": 0.5, "step": 4},
        {"eval_loss": 0.8, "eval_accuracy": 0.6, "epoch": 0.5, "step": 4},
        {"loss": 0.7, "learning_rate": 0.005, "epoch": 1.0, "step": 8},
    ]
    assert latest_metrics(history) == {
        "loss": 0.7,
        "learning_rate": 0.005,
        "epoch": 1.0,
        "step": 8,
        "eval_loss": 0.8,
        "eval_accuracy": 0.6,
    }


def test_transformers_mirror_makes_the_target_hold_exactly_the_new_folder(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from git_theta_filter.integrations.transformers import _mirror

    first, second, target = tmp_path / "c-4", tmp_path / "c-8", tmp_path / "repo" / "checkpoint"
    for folder, names in (
        (first, ("model.safetensors", "scaler.pt", "sub/extra.json")),
        (second, ("model.safetensors", "optimizer.pt")),
    ):
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(f"{folder.name}/{name}")
    _mirror(first, target)
    (target / "model.safetensors.metrics.json").write_text("{}")
    present, removed = _mirror(second, target)
    assert sorted(p.relative_to(target).as_posix() for p in present) == [
        "model.safetensors",
        "optimizer.pt",
    ]
    assert sorted(p.relative_to(target).as_posix() for p in removed) == [
        "scaler.pt",
        "sub/extra.json",
    ]
    assert (target / "model.safetensors").read_text() == "c-8/model.safetensors"
    assert not (target / "sub").exists() and not (target / "scaler.pt").exists()
    assert (target / "model.safetensors.metrics.json").exists()  # rewritten by the commit


def test_transformers_callback_names_a_checkpoint_folder_the_trainer_did_not_write(
    git_env, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hyperparameter search saves elsewhere: the callback says so rather than
    # committing an empty folder (a commit that removes every model file).
    pytest.importorskip("transformers")
    from types import SimpleNamespace

    from git_theta_filter.integrations.transformers import (
        CheckpointFolderMissingError,
        ThetaCallback,
    )

    enter_git_env(monkeypatch, git_env.env)
    callback = ThetaCallback(repo=repo)
    args = SimpleNamespace(output_dir=str(tmp_path / "out"))
    state = SimpleNamespace(is_world_process_zero=True, global_step=7, log_history=[])
    with pytest.raises(CheckpointFolderMissingError) as caught:
        callback.on_save(args, state, SimpleNamespace())
    assert caught.value.folder == tmp_path / "out" / "checkpoint-7"
    assert callback.commits == []
