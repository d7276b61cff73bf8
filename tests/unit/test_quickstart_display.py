"""examples/quickstart.sh shows each command as it must be typed: a glob pattern stays quoted."""

from __future__ import annotations

import subprocess
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.sh"


def shown(*words: str) -> str:
    """What the quickstart's ``shown`` function prints for a command."""
    script = f'eval "$(sed -n "/^shown()/,/^}}/p" {QUICKSTART})"; shown "$@"'
    return subprocess.run(
        ["bash", "-c", script, "bash", *words], check=True, capture_output=True, text=True
    ).stdout


def test_quickstart_prints_the_track_pattern_quoted() -> None:
    assert shown("git", "theta", "track", "*.pth") == "git theta track '*.pth'"
    assert shown("git", "theta-diff", "HEAD~1") == "git theta-diff HEAD~1"
    assert shown("git", "commit", "-m", "it's done") == "git commit -m 'it'\\''s done'"
