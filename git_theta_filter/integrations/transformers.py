"""A 🤗 Transformers callback that commits each saved checkpoint to git::

    from git_theta_filter.integrations.transformers import ThetaCallback

    trainer = Trainer(model, args, ..., callbacks=[ThetaCallback("checkpoint")])

Whenever the Trainer saves (``save_strategy``, ``save_steps``), its
checkpoint folder (``<output_dir>/checkpoint-<step>``: ``model.safetensors``,
``optimizer.pt``, ``scheduler.pt``, ``trainer_state.json`` …) is mirrored to
``path`` in the repository's work tree and committed there, so every version
has the same paths and ``git theta-log -- checkpoint/model.safetensors``
follows the model from commit to commit. The metrics are the latest value of
each number in ``state.log_history`` (``loss``, ``eval_loss``,
``eval_accuracy``, ``learning_rate``, ``epoch`` …), written to
``<model file>.metrics.json`` in the same commit.

The files are linked into place when the output directory is on the same
file system (copied otherwise), and cleaned into the store in this process
(the Python API's fast path); training waits for that commit, no longer, and
the callback keeps how long in :attr:`ThetaCallback.commits`. Keep
``output_dir`` outside the repository (or ignored by it). Only the main
process commits.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..errors import ThetaError
from ._committer import MODEL_SUFFIXES, CommitRecord, Committer, describe, scalar_metrics

__all__ = ["ThetaCallback", "CheckpointFolderMissingError"]

DEFAULT_MESSAGE = "step {step}"
# The model's weights, in the order the Trainer may have written them: the metrics go beside it.
_MODEL_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors")

logger = logging.get_logger(__name__)


class CheckpointFolderMissingError(ThetaError):
    """The Trainer said it saved, but its checkpoint folder is not where it should be."""

    def __init__(self, folder: Path) -> None:
        super().__init__(
            f"{folder}: the Trainer's checkpoint folder is missing",
            hint="ThetaCallback reads <output_dir>/checkpoint-<step>; "
            "hyperparameter search runs are not supported",
        )
        self.folder = folder


def latest_metrics(log_history: list[dict[str, Any]]) -> dict[str, float | int | bool]:
    """The latest logged value of each number (training and evaluation logs alternate)."""
    merged: dict[str, Any] = {}
    for entry in log_history:
        merged.update(entry)
    return scalar_metrics(merged)


def _mirror(source: Path, target: Path) -> tuple[list[Path], list[Path]]:
    """Make ``target`` hold exactly ``source``'s files: the files it now holds, and those
    it no longer does.

    A hard link where the file systems allow (the Trainer never rewrites a
    saved checkpoint, and git replaces files rather than writing into them),
    else a copy. A ``.metrics.json`` is left for the commit to rewrite.
    """
    wanted = sorted(path.relative_to(source) for path in source.rglob("*") if path.is_file())
    removed = []
    if target.exists():
        for path in sorted(target.rglob("*"), reverse=True):  # files before their folders
            # A link (a commit may have made one) is removed, never followed.
            if path.is_symlink() or (path.is_file() and not path.name.endswith(".metrics.json")):
                path.unlink()
                if path.relative_to(target) not in wanted:
                    removed.append(path)
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    for relative in wanted:
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / relative, destination)
        except OSError:
            shutil.copy2(source / relative, destination)
    return [target / relative for relative in wanted], removed


class ThetaCallback(TrainerCallback):
    """Commit each checkpoint the Trainer saves to ``path`` in the repository at ``repo``
    (see the module docstring).

    ``path`` is a folder, relative to the top of the work tree or absolute
    (inside it); its model files are added to .gitattributes when the filter
    does not track them yet. ``message`` may name ``{step}``, ``{epoch}``,
    ``{metrics}`` and any metric (``{eval_loss:.3f}``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "checkpoint",
        *,
        repo: str | os.PathLike[str] = ".",
        message: str = DEFAULT_MESSAGE,
    ) -> None:
        self.path = path
        self._committer = Committer(repo, message)

    @property
    def commits(self) -> list[CommitRecord]:
        """The commits made so far, with how long training waited for each."""
        return self._committer.records

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if state.is_world_process_zero:
            self._committer.repo  # noqa: B018 - open now: a missing filter fails before training

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero:
            return
        start = time.perf_counter()
        # Typed str | None, but TrainingArguments.__post_init__ fills in a default.
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"  # type: ignore[arg-type]
        if not folder.is_dir():
            raise CheckpointFolderMissingError(folder)
        # _mirror empties the folder first: through a committed link, a folder outside.
        target = self._committer.worktree_path(self.path, link=False)
        present, removed = _mirror(folder, target)
        files = [self._committer.relative(path) for path in present]
        self._committer.track([f for f in files if f.endswith(MODEL_SUFFIXES)])
        record = self._committer.commit(
            files + [self._committer.relative(path) for path in removed],
            latest_metrics(state.log_history),
            metrics_for=self._model_file(files),
            step=state.global_step,
            epoch=state.epoch,
            write_seconds=time.perf_counter() - start,
        )
        logger.info(describe(record, self._committer.relative(target)))

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        summary = self._committer.summary()
        if summary and state.is_world_process_zero:
            logger.info(summary)

    @staticmethod
    def _model_file(files: list[str]) -> str:
        """The file the metrics describe: the model's weights, else the first model file."""
        by_name = {Path(file).name: file for file in files}
        for name in _MODEL_FILES:
            if name in by_name:
                return by_name[name]
        return next((f for f in files if f.endswith(MODEL_SUFFIXES)), files[0])
