"""Train a small MNIST classifier, committing the checkpoint every epoch
through git-theta's Python API.

    python examples/train_mnist.py                      # a throwaway repository in /tmp
    python examples/train_mnist.py --repo runs/mnist --epochs 8

Each epoch commits ``model.pth`` (model, optimizer and epoch) with the
epoch's training loss and validation accuracy in ``model.pth.metrics.json``.
At the end the script prints ``git theta-log``, asks it for the best epoch
(``git theta-log --best val.acc``) and restores that epoch's file.

Data: torchvision's MNIST when torchvision is installed and the data is
already under ``--data`` (nothing is downloaded); otherwise a synthetic
MNIST-shaped set: 28×28 grey images of ten classes, each class a few strokes
at its own place, with random shifts and noise. It runs in seconds on a CPU.
Needs ``git theta install`` (``./install.sh`` does it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import git_theta_filter as gtf

MODEL_FILE = "model.pth"
IMAGE = 28


def synthetic_mnist(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images of shape (1, 28, 28) in [0, 1] and their labels 0-9."""
    # One fixed template per class: three bright strokes at class-specific places.
    templates = torch.zeros(10, IMAGE, IMAGE)
    layout = torch.Generator().manual_seed(1234)
    for digit in range(10):
        for _ in range(3):
            row, col = torch.randint(4, IMAGE - 8, (2,), generator=layout).tolist()
            if torch.rand(1, generator=layout).item() < 0.5:
                templates[digit, row : row + 2, col : col + 8] = 1.0
            else:
                templates[digit, row : row + 8, col : col + 2] = 1.0
    labels = torch.randint(0, 10, (count,), generator=generator)
    images = templates[labels]
    shifts = torch.randint(-2, 3, (count, 2), generator=generator)
    for index, (down, right) in enumerate(shifts.tolist()):
        images[index] = torch.roll(images[index], shifts=(down, right), dims=(0, 1))
    images = images + 0.6 * torch.randn(images.shape, generator=generator)
    return images.clamp(0, 1).unsqueeze(1), labels


def load_data(data_dir: Path, generator: torch.Generator) -> tuple[str, tuple[torch.Tensor, ...]]:
    """(description, (train images, train labels, validation images, validation labels))."""
    try:
        from torchvision.datasets import MNIST

        train = MNIST(str(data_dir), train=True, download=False)
        test = MNIST(str(data_dir), train=False, download=False)
    except (ImportError, RuntimeError):  # no torchvision, or no MNIST files under data_dir
        train_images, train_labels = synthetic_mnist(4000, generator)
        val_images, val_labels = synthetic_mnist(1000, generator)
        return "synthetic MNIST-shaped data", (train_images, train_labels, val_images, val_labels)
    as_images = lambda data: data.float().div(255).unsqueeze(1)  # noqa: E731
    return f"MNIST from {data_dir}", (
        as_images(train.data),
        train.targets,
        as_images(test.data),
        test.targets,
    )


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
) -> float:
    """One pass over the data in shuffled batches; returns the mean training loss."""
    model.train()
    order = torch.randperm(len(images), generator=generator)
    total, batches = 0.0, 0
    for start in range(0, len(images), 64):
        batch = order[start : start + 64]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
        loss.backward()
        optimizer.step()
        total += loss.item()
        batches += 1
    return total / batches


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return (model(images).argmax(dim=1) == labels).float().mean().item()


def open_repository(path: Path) -> gtf.Repository:
    """The repository at ``path`` (created if needed), with ``*.pth`` tracked by git-theta."""
    path.mkdir(parents=True, exist_ok=True)
    if (
        subprocess.run(["git", "rev-parse", "--git-dir"], cwd=path, capture_output=True).returncode
        != 0
    ):
        subprocess.run(["git", "init", "-q", str(path)], check=True)
    repo = gtf.open(path)
    repo.track("*.pth")
    return repo


def git(repo: gtf.Repository, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo.path, check=True, capture_output=True, text=True
    ).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--repo",
        type=Path,
        help="the repository to commit to (default: a new one in a temporary directory)",
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("data"),
        help="where torchvision's MNIST files are, if anywhere",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    source, (train_images, train_labels, val_images, val_labels) = load_data(args.data, generator)
    try:
        repo = open_repository(args.repo or Path(tempfile.mkdtemp(prefix="theta-mnist-")))
    except gtf.FilterNotInstalledError as error:
        print(f"{error}; {error.hint}", file=sys.stderr)
        return 1
    print(f"training on {source}; committing to {repo.path}")

    model = nn.Sequential(
        nn.Flatten(), nn.Linear(IMAGE * IMAGE, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(1, args.epochs + 1):
        loss = train_epoch(model, optimizer, train_images, train_labels, generator)
        val_acc = accuracy(model, val_images, val_labels)
        commit = repo.commit_checkpoint(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
            MODEL_FILE,
            message=f"epoch {epoch}",
            metrics={"train": {"loss": loss}, "val": {"acc": val_acc}},
        )
        print(
            f"epoch {epoch}: train loss {loss:.4f}, val acc {val_acc:.4f}, committed {commit[:7]}"
        )

    print("\n$ git theta-log")
    print(git(repo, "theta-log", "--", MODEL_FILE), end="")
    print("\n$ git theta-log --best val.acc")
    best_line = git(repo, "theta-log", "--best", "val.acc", "--", MODEL_FILE)
    print(best_line, end="")
    best_commit = best_line.split()[0]

    repo.restore(MODEL_FILE, rev=best_commit)
    # The restored file holds the best weights: loading them gives the best accuracy again.
    model.load_state_dict(repo.load_state_dict(MODEL_FILE, rev=best_commit, prefix="model."))
    best = repo.best(MODEL_FILE, metric="val.acc", mode="max")
    assert best.commit == best_commit
    print(
        f"\nrestored {MODEL_FILE} from {best_commit[:7]} (epoch {best.metrics['epoch']}, "
        f"val acc {accuracy(model, val_images, val_labels):.4f}); it is staged: `git commit` keeps "
        "it as the new head"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
