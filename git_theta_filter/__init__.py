"""git-theta-filter: version PyTorch model files in plain Git, one tensor per object.

The Python API (:mod:`git_theta_filter.api`) is available at the top level::

    import git_theta_filter as gtf
    repo = gtf.open(".")

It is imported on first use, not here: git starts the filter process, which
imports this package, for every add, status and checkout, and the filter
needs none of it.
"""

from __future__ import annotations

from .version import __version__ as __version__

# typing is not imported: the filter's client (filter_client.py) imports this
# package before ``site``, and typing costs it more than everything else it loads.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_API_NAMES = frozenset(
    {
        "open",
        "Repository",
        "HistoryEntry",
        "FilterNotInstalledError",
        "NotTrackedError",
        "ModelNotFoundError",
        "NoWorkTreeError",
        "UnsupportedDTypeError",
        "UnsafeWorkTreePathError",
        "ThetaWarning",
    }
)


def __getattr__(name: str) -> Any:
    if name in _API_NAMES:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API_NAMES])
