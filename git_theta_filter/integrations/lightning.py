"""A Lightning callback that commits the checkpoint to git as training goes::

    from git_theta_filter.integrations.lightning import ThetaCheckpoint

    trainer = Trainer(callbacks=[ThetaCheckpoint("model.ckpt", every_n_epochs=1)])

Each commit holds ``Trainer.save_checkpoint``'s file at ``path`` and, in
``<path>.metrics.json``, the metrics logged so far (``trainer.callback_metrics``),
so ``git theta-log`` shows one row per commit with them, and
``git theta-log --best val_loss`` finds the best. The file is cleaned into the
store in this process (the Python API's fast path); training waits for the
save and that commit, no longer, and the callback keeps how long in
:attr:`ThetaCheckpoint.commits`.

When to commit (any combination):

- ``every_n_epochs``: at the end of every N-th training epoch, after its
  validation (the default, N = 1, when nothing else is asked for);
- ``every_n_train_steps``: after every N-th optimizer step;
- ``on_model_checkpoint=True``: whenever a ``ModelCheckpoint`` saves. The
  commit is made at the next point where the weights are still those it
  saved (before the next batch, the next epoch, or the end of training).

A state is committed once, however many of these fall on the same step.
Only global rank 0 commits; every rank takes part in the save, as Lightning
requires.
"""

from __future__ import annotations

import os
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from ._committer import CommitRecord, Committer, describe, scalar_metrics

__all__ = ["ThetaCheckpoint"]

DEFAULT_MESSAGE = "epoch {epoch}, step {step}"


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, not {value!r}")
    return value


class ThetaCheckpoint(pl.Callback):
    """Commit ``path`` (a ``.ckpt`` from ``Trainer.save_checkpoint``) to the repository at
    ``repo`` as training goes (see the module docstring).

    ``path`` is relative to the top of the work tree, or absolute (inside it);
    it is added to .gitattributes when the filter does not track it yet.
    ``message`` may name ``{epoch}``, ``{step}``, ``{metrics}`` and any metric
    (``{val_loss:.3f}``). ``weights_only`` saves only the model's weights.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "model.ckpt",
        *,
        repo: str | os.PathLike[str] = ".",
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        on_model_checkpoint: bool = False,
        message: str = DEFAULT_MESSAGE,
        weights_only: bool = False,
    ) -> None:
        super().__init__()
        if every_n_epochs is None and every_n_train_steps is None and not on_model_checkpoint:
            every_n_epochs = 1
        self.every_n_epochs = _positive("every_n_epochs", every_n_epochs)
        self.every_n_train_steps = _positive("every_n_train_steps", every_n_train_steps)
        self.on_model_checkpoint = on_model_checkpoint
        self.weights_only = weights_only
        self.path = path
        self._committer = Committer(repo, message)
        self._set_up = False  # setup() ran for "fit"
        self._relative: str | None = None  # path, from the top of the work tree
        self._last_step: int | None = None  # the global step last committed
        self._pending = False  # a ModelCheckpoint saved; commit at the next safe point
        self._saving = False  # our own save, which also calls on_save_checkpoint

    @property
    def commits(self) -> list[CommitRecord]:
        """The commits made so far, with how long training waited for each."""
        return self._committer.records

    # -- when -----------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # Open (and track) now: a missing filter fails before any training, not after it.
        # save_checkpoint opens the file for writing, which would follow a link there.
        self._committer.worktree_path(self.path, link=False)
        self._set_up = True
        if trainer.is_global_zero:
            self._relative = self._committer.relative(self.path, link=False)
            self._committer.track([self._relative])

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step and trainer.global_step % n == 0:
            self._commit(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = self.every_n_epochs
        if n and (trainer.current_epoch + 1) % n == 0:
            self._commit(trainer)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.on_model_checkpoint and not self._saving:
            self._pending = True

    # Points between optimizer steps, where the weights are still those a ModelCheckpoint saved.
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        self._commit_pending(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._commit_pending(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._commit_pending(trainer)
        summary = self._committer.summary()
        if summary:
            rank_zero_info(summary)

    # -- how ------------------------------------------------------------------
    def _commit_pending(self, trainer: pl.Trainer) -> None:
        if self._pending:
            self._pending = False
            self._commit(trainer)

    def _commit(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking or trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        assert self._set_up  # setup() ran for "fit", before any training hook
        # Checked again before each save: a checkout during training may have put a link
        # where the file was, and save_checkpoint would write through it.
        target = str(self._committer.worktree_path(self.path, link=False))
        start = time.perf_counter()
        self._saving = True
        try:
            # Every rank calls save_checkpoint (a strategy may gather from all of them).
            trainer.save_checkpoint(target, weights_only=self.weights_only)
        finally:
            self._saving = False
        if not trainer.is_global_zero:
            return
        assert self._relative is not None  # setup() ran on rank 0
        record = self._committer.commit(
            [self._relative],
            scalar_metrics(trainer.callback_metrics),
            metrics_for=self._relative,
            step=trainer.global_step,
            epoch=trainer.current_epoch,
            write_seconds=time.perf_counter() - start,
        )
        rank_zero_info(describe(record, self._relative))
