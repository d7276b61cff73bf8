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


_HOOKS_CHECK = (
    "import sys\n"
    "from git_theta_filter.gitrepo import GitRepo\n"
    "from git_theta_filter.lfs_interop import lfs_in_use\n"
    "print(lfs_in_use(GitRepo.discover('.')), 'pygit2' in sys.modules,\n"
    "      'git_theta_filter.attributes' in sys.modules)\n"
)


def test_the_hooks_check_of_a_filters_start_loads_no_pygit2(tmp_path) -> None:
    """Each command's filter checks whether the repository uses Git LFS, reading the work
    tree's .gitattributes: pygit2 (50 ms to import) is not needed for that, and loading it
    there cost every add and commit as much (found in a benchmark run of 2026-12-03). The
    attributes module it uses is one the server warms."""
    from git_theta_filter import filter_server

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", _HOOKS_CHECK],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.decode().split() == ["True", "False", "True"]
    assert "git_theta_filter.attributes" in filter_server._WARM_MODULES
