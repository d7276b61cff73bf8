"""How long the fuzz targets run: a bounded number of examples in CI, more on request.

Every target in this folder takes its settings from :func:`fuzz`. In CI each
runs the number of examples it asks for, tuned so that the folder takes well
under 30 seconds. For a longer run, set ``THETA_FUZZ_EXAMPLES``; it applies to
every target::

    THETA_FUZZ_EXAMPLES=20000 python -m pytest tests/fuzz -q

Hypothesis keeps failing examples in ``.hypothesis/`` and replays them first
on the next run.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings

__all__ = ["fuzz", "scratch_dir"]

_OVERRIDE = int(os.environ.get("THETA_FUZZ_EXAMPLES", "0"))


def fuzz(ci_examples: int) -> settings:
    """Settings for one target: ``ci_examples`` examples unless
    THETA_FUZZ_EXAMPLES says otherwise.
    """
    return settings(
        max_examples=_OVERRIDE or ci_examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


def scratch_dir() -> Path:
    """A directory for a target's files, removed when the run ends.

    Made at import, since hypothesis runs many examples per test and the
    marker paths are baked into seed pickles before any fixture exists.
    """
    path = Path(tempfile.mkdtemp(prefix="theta-fuzz-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
