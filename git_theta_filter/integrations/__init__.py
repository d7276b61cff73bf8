"""Commits from the training loops people run: Lightning and 🤗 Transformers.

- :class:`git_theta_filter.integrations.lightning.ThetaCheckpoint`, a Lightning ``Callback``;
- :class:`git_theta_filter.integrations.transformers.ThetaCallback`, a ``TrainerCallback``.

Each is imported on its own, so neither framework is needed for the other.
Both commit through the Python API (:mod:`git_theta_filter.api`): the
checkpoint is cleaned into the store in the training process, never piped
through git, and training waits only for that commit. How long each commit
took is kept in the callback's ``commits`` and logged.
"""
