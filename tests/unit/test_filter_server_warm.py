"""The filter server's warm imports (filter_server._warm_up): numpy and blake3 too, and no
thread."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_SCRIPT = (
    "import os, sys\n"
    "from git_theta_filter import filter_server\n"
    "print(filter_server._warm_up(), 'numpy' in sys.modules, 'blake3' in sys.modules,\n"
    "      len(os.listdir('/proc/self/task')))\n"
)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_the_server_warms_numpy_and_blake3_and_still_holds_no_thread() -> None:
    """Children start with numpy loaded (its import took 0.1 s of CPU of every large
    add) and blake3, and the server may fork: numpy's BLAS is kept to one thread, which
    starts none."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    }
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, check=True, timeout=60
    )
    assert result.stdout.decode().split() == ["True", "True", "True", "1"]
