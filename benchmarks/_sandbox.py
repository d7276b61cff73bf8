"""The environment every benchmark runs git in: its own HOME, no system or user config."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def sandbox_env(home: Path) -> dict[str, str]:
    """The current environment minus GIT_* variables and PYTHONDONTWRITEBYTECODE, with
    HOME at ``home`` and no system config.

    git-theta is installed beside this interpreter, so its directory goes first on PATH.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        # Bytecode is cached, as Python does by default: every filter and hook start
        # would compile the package again where PYTHONDONTWRITEBYTECODE is set (CI).
        if not k.startswith("GIT_")
        and k not in ("HOME", "XDG_CONFIG_HOME", "PYTHONDONTWRITEBYTECODE")
    }
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        GIT_CONFIG_NOSYSTEM="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env
