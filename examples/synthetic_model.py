"""Write a small synthetic checkpoint for the quickstart: a torch.nn MLP "trained" for N epochs.

Each epoch nudges only the last layer and the head, as fine-tuning does, so
the store shows per-tensor deduplication. Deterministic: the same epoch gives
the same bytes.

    python examples/synthetic_model.py model.pth --epoch 3
"""

from __future__ import annotations

import argparse

import torch


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(256, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )


def checkpoint(epoch: int) -> dict:
    model = build_model()
    generator = torch.Generator().manual_seed(epoch)
    with torch.no_grad():
        for _step in range(1, epoch):
            # Fine-tune only the last two layers.
            for layer in (model[4], model[6]):
                layer.weight.add_(0.01 * torch.randn(layer.weight.shape, generator=generator))
    loss = 2.3 / (1 + epoch)
    return {
        "model": model.state_dict(),
        "epoch": epoch,
        "metrics": {"loss": round(loss, 4), "val_acc": round(1 - loss / 3, 4)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--epoch", type=int, default=1)
    args = parser.parse_args()
    torch.save(checkpoint(args.epoch), args.path)


if __name__ == "__main__":
    main()
