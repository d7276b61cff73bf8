"""Train a small classifier with Lightning; ThetaCheckpoint commits ``model.ckpt`` every epoch.

    python examples/train_lightning.py                      # a throwaway repository in /tmp
    python examples/train_lightning.py --repo runs/lightning --epochs 8

The only git-theta line in the training code is the callback::

    trainer = Trainer(callbacks=[ThetaCheckpoint("model.ckpt")])

Each commit holds the Lightning checkpoint and, in ``model.ckpt.metrics.json``,
the epoch's ``train_loss``, ``val_loss`` and ``val_acc``. At the end the
script prints ``git theta-log``, asks it for the epoch with the lowest
validation loss (``git theta-log --best val_loss``), loads that commit's
weights straight from the store and validates them again. The data is
synthetic (two noisy classes); it runs in seconds on a CPU. Needs
``git theta install`` (``./install.sh`` does it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import git_theta_filter as gtf
from git_theta_filter.integrations.lightning import ThetaCheckpoint

CHECKPOINT = "model.ckpt"


def synthetic_data(count: int, generator: torch.Generator) -> TensorDataset:
    """``count`` points of 16 features in two classes that overlap a little."""
    labels = torch.randint(0, 2, (count,), generator=generator)
    centres = torch.randn(2, 16, generator=torch.Generator().manual_seed(7))
    features = centres[labels] + 1.5 * torch.randn(count, 16, generator=generator)
    return TensorDataset(features, labels)


class Classifier(pl.LightningModule):
    def __init__(self, hidden: int = 32, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_index: int) -> torch.Tensor:
        features, labels = batch
        loss = nn.functional.cross_entropy(self.net(features), labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_index: int) -> None:
        features, labels = batch
        logits = self.net(features)
        self.log("val_loss", nn.functional.cross_entropy(logits, labels))
        self.log("val_acc", (logits.argmax(dim=1) == labels).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class PrintValidation(pl.Callback):
    """One line per epoch with the validation metrics, as the commit records them."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            print(
                f"epoch {trainer.current_epoch}: val_loss {metrics['val_loss'].item()!r} "
                f"val_acc {metrics['val_acc'].item()!r}",
                flush=True,
            )


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--repo", type=Path, help="the repository (default: a new one in /tmp)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    repo = args.repo or Path(tempfile.mkdtemp(prefix="theta-lightning-"))
    repo.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["git", "rev-parse"], cwd=repo, capture_output=True).returncode:
        git(repo, "init", "-q")
    pl.seed_everything(args.seed, verbose=False)
    generator = torch.Generator().manual_seed(args.seed)
    train = DataLoader(synthetic_data(512, generator), batch_size=64, shuffle=True)
    validation = DataLoader(synthetic_data(256, generator), batch_size=256)
    print(f"training for {args.epochs} epochs; committing to {repo}", flush=True)

    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=[ThetaCheckpoint(CHECKPOINT, repo=repo), PrintValidation()],
        default_root_dir=tempfile.mkdtemp(prefix="theta-lightning-logs-"),
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Classifier()
    try:
        trainer.fit(model, train, validation)
    except gtf.FilterNotInstalledError as error:
        print(f"{error}; {error.hint}", file=sys.stderr)
        return 1

    print("\n$ git theta-log", flush=True)
    print(git(repo, "theta-log", "--", CHECKPOINT), end="")
    print("\n$ git theta-log --best val_loss")
    best_line = git(repo, "theta-log", "--best", "val_loss", "--", CHECKPOINT)
    print(best_line, end="")
    best_commit = best_line.split()[0]

    # The weights of the best epoch, read from the store (no pickle is loaded).
    state = gtf.open(repo).load_state_dict(CHECKPOINT, rev=best_commit, prefix="state_dict.")
    model.load_state_dict(state)
    (result,) = trainer.validate(model, validation, verbose=False)
    print(f"\nthe weights of {best_commit[:7]} validate again to val_loss {result['val_loss']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
