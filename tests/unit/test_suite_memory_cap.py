"""The suite's own guard: a test that allocates without bound fails, not the machine."""

from __future__ import annotations

import errno
import mmap
import resource
import subprocess
import sys

import pytest
from conftest import TEST_ADDRESS_SPACE


def test_a_mapping_past_the_cap_is_refused_in_the_test() -> None:
    # A mapping, never touched: without the cap it would cost no memory either.
    with pytest.raises(OSError) as refused:
        mmap.mmap(-1, TEST_ADDRESS_SPACE + (1 << 30))
    assert refused.value.errno == errno.ENOMEM


def test_commands_a_test_starts_inherit_the_cap() -> None:
    child = subprocess.run(
        [sys.executable, "-c", "import resource; print(resource.getrlimit(resource.RLIMIT_AS)[0])"],
        capture_output=True,
        check=True,
        text=True,
    )
    limit = int(child.stdout)
    assert limit != resource.RLIM_INFINITY and limit <= TEST_ADDRESS_SPACE
