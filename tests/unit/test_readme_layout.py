"""README.md's "Layout" paragraph (in Development) names every module of the package."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import git_theta_filter

PACKAGE = Path(git_theta_filter.__file__).parent
README = PACKAGE.parent / "README.md"
# Packages whose modules the README describes as a group ("one thin module per command").
DESCRIBED_AS_A_GROUP = ("cli", "integrations")


def layout_section() -> str:
    text = README.read_text()
    start = text.index("Layout of `git_theta_filter/`")
    return text[start : text.index("\nTests in ", start)]


def test_the_readme_layout_names_every_module_and_package() -> None:
    named = set(re.findall(r"`([\w*]+(?:\.py|/))`", layout_section()))
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if path.name == "__init__.py" or relative.parts[0] in DESCRIBED_AS_A_GROUP:
            continue
        if not any(fnmatch.fnmatchcase(path.name, name) for name in named):
            missing.append(str(relative))
    packages = {p.parent.name + "/" for p in PACKAGE.glob("*/__init__.py")}
    missing += sorted(packages - named)
    assert missing == [], f"README.md's Layout does not name: {missing}"
