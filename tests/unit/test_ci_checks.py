"""CI (.ci/run) checks lint and formatting with a ruff that ./install.sh puts on a clean machine."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import git_theta_filter

ROOT = Path(git_theta_filter.__file__).parent.parent


def test_ci_runs_ruff_check_and_format_after_the_install() -> None:
    commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "./install.sh" in commands
    for check in ("ruff check .", "ruff format --check ."):
        assert check in commands, f".ci/run does not run `{check}`"
        assert commands.index(check) > commands.index("./install.sh")


def test_the_install_puts_the_pinned_ruff_on_the_machine() -> None:
    assert re.search(r'pip install .*-e "\.\[test\]"', (ROOT / "install.sh").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    test_extra = project["project"]["optional-dependencies"]["test"]
    # Lint and format rules change between ruff releases: CI and developers use one.
    assert [spec for spec in test_extra if re.fullmatch(r"ruff==[\d.]+", spec)]
