"""Progress on stderr (progress.py): redrawn on a terminal, one summary line otherwise."""

from __future__ import annotations

import io

import pytest

from git_theta_filter import progress as progress_module
from git_theta_filter.progress import Progress, QuietProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def redraw_always(monkeypatch):
    """Every step drawn, so that the output does not depend on timing."""
    monkeypatch.setattr(progress_module, "REDRAW_INTERVAL", 0)


def test_progress_is_redrawn_on_a_terminal(redraw_always):
    terminal = Terminal()
    progress = Progress("Uploading tensors", 2, 2_700_000_000, stream=terminal)
    progress.advance(1_200_000_000)
    progress.advance(1_500_000_000)
    progress.finish("uploaded 2 tensor objects")
    assert terminal.getvalue() == (
        "\rUploading tensors: 0% (0/2), 0 B/2.7 GB"
        "\rUploading tensors: 50% (1/2), 1.2 GB/2.7 GB"
        "\rUploading tensors: 100% (2/2), 2.7 GB/2.7 GB"
        "\rUploading tensors: 100% (2/2), 2.7 GB/2.7 GB\n"
    )


def test_progress_without_bytes_counts_items_only(redraw_always):
    terminal = Terminal()
    progress = Progress("Checking objects", 1, stream=terminal)
    progress.advance()
    progress.finish()
    assert terminal.getvalue() == (
        "\rChecking objects: 0% (0/1)\rChecking objects: 100% (1/1)\rChecking objects: 100% (1/1)\n"
    )


def test_progress_off_a_terminal_prints_only_the_summary():
    log = io.StringIO()
    progress = Progress("Uploading tensors", 2, 100, stream=log)
    progress.advance(50)
    progress.advance(50)
    progress.finish("uploaded 2 tensor objects (100 B) to s3://b")
    assert log.getvalue() == "git-theta: uploaded 2 tensor objects (100 B) to s3://b\n"
    assert (progress.done, progress.done_bytes) == (2, 100)


def test_quiet_progress_counts_and_says_nothing():
    terminal = Terminal()
    progress = QuietProgress("Uploading tensors", 2, 100, stream=terminal)
    progress.advance(50)
    progress.finish("uploaded")
    assert terminal.getvalue() == ""
    assert (progress.done, progress.done_bytes) == (1, 50)
