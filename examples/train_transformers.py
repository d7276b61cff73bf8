"""Fine-tune a tiny BERT with 🤗 Transformers; ThetaCallback commits every checkpoint it saves.

    python examples/train_transformers.py                   # a throwaway repository in /tmp
    python examples/train_transformers.py --repo runs/bert --steps 40

The only git-theta line in the training code is the callback::

    trainer = Trainer(..., callbacks=[ThetaCallback("checkpoint")])

Every ``save_steps`` the Trainer writes ``checkpoint-<step>/`` to its
output directory; the callback commits that folder's files
(``model.safetensors``, ``optimizer.pt``, ``scheduler.pt``, …) to
``checkpoint/`` in the repository, with the latest ``loss``, ``eval_loss``
and ``eval_accuracy`` in ``checkpoint/model.safetensors.metrics.json``. At
the end the script prints ``git theta-log`` for the model and asks it for the
checkpoint with the lowest ``eval_loss``.

The model is built from a small ``BertConfig`` and the data is synthetic, so
nothing is downloaded (``HF_HUB_OFFLINE=1``); it runs in seconds on a CPU.
Needs ``git theta install`` (``./install.sh`` does it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402 - after the offline switches
import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import git_theta_filter as gtf  # noqa: E402
from git_theta_filter.integrations.transformers import ThetaCallback  # noqa: E402

MODEL_FILE = "checkpoint/model.safetensors"


class Sentences(torch.utils.data.Dataset):
    """Sequences of 12 token ids; the label says whether the first token is in the upper half."""

    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 64, (count, 12), generator=generator)
        self.labels = (self.ids[:, 0] >= 34).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    predicted = np.argmax(prediction.predictions, axis=-1)
    return {"accuracy": float((predicted == prediction.label_ids).mean())}


class PrintEvaluation(TrainerCallback):
    """One line per evaluation, as the next commit records it."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs) -> None:  # noqa: ANN001
        print(
            f"step {state.global_step}: eval_loss {metrics['eval_loss']!r} "
            f"eval_accuracy {metrics['eval_accuracy']!r}",
            flush=True,
        )


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--repo", type=Path, help="the repository (default: a new one in /tmp)")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--save-steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    repo = args.repo or Path(tempfile.mkdtemp(prefix="theta-transformers-"))
    repo.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["git", "rev-parse"], cwd=repo, capture_output=True).returncode:
        git(repo, "init", "-q")
    print(f"training for {args.steps} steps; committing to {repo}", flush=True)

    torch.manual_seed(args.seed)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=2,
    )
    training = TrainingArguments(
        # Outside the repository: the callback commits a copy of each checkpoint folder.
        output_dir=tempfile.mkdtemp(prefix="theta-transformers-out-"),
        max_steps=args.steps,
        per_device_train_batch_size=16,
        learning_rate=5e-3,
        eval_strategy="steps",
        eval_steps=args.save_steps,
        save_strategy="steps",
        save_steps=args.save_steps,
        logging_steps=args.save_steps,
        seed=args.seed,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=BertForSequenceClassification(config),
        args=training,
        train_dataset=Sentences(256, seed=args.seed),
        eval_dataset=Sentences(128, seed=args.seed + 1),
        compute_metrics=accuracy,
        callbacks=[ThetaCallback("checkpoint", repo=repo), PrintEvaluation()],
    )
    try:
        trainer.train()
    except gtf.FilterNotInstalledError as error:
        print(f"{error}; {error.hint}", file=sys.stderr)
        return 1

    print("\n$ git theta-log -- checkpoint/model.safetensors", flush=True)
    print(git(repo, "theta-log", "--", MODEL_FILE), end="")
    print("\n$ git theta-log --best eval_loss")
    print(git(repo, "theta-log", "--best", "eval_loss", "--", MODEL_FILE), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
