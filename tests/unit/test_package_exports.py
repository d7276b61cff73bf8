"""The top level re-exports the Python API lazily; its list of names must match the API's."""

from __future__ import annotations

import subprocess
import sys

import git_theta_filter
from git_theta_filter import api


def test_lazy_top_level_names_are_exactly_the_api() -> None:
    assert git_theta_filter._API_NAMES == set(api.__all__)
    for name in api.__all__:
        assert getattr(git_theta_filter, name) is getattr(api, name)


def test_importing_the_package_imports_neither_the_api_nor_torch() -> None:
    code = (
        "import sys, git_theta_filter; "
        "print('git_theta_filter.api' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]
