"""``git theta-log --plot``: metrics and ‖Δθ‖/‖θ‖ over commits, drawn with matplotlib.

matplotlib is an optional extra (``pip install 'git-theta-filter[plot]'``);
it is imported only here, and only when a plot is asked for.
"""

from __future__ import annotations

import math
from pathlib import Path

from .errors import ThetaError
from .theta_log import LogEntry

__all__ = ["PlotUnavailableError", "check_plot_target", "plot_history"]

PLOT_SUFFIXES = (".png", ".svg")


class PlotUnavailableError(ThetaError):
    """A plot was asked for but cannot be drawn."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailableError(
            "--plot needs matplotlib, which is not installed",
            hint="pip install 'git-theta-filter[plot]'",
        ) from None
    matplotlib.use("Agg")  # files only: never open a window
    import matplotlib.pyplot as pyplot

    return pyplot


def check_plot_target(path: str) -> None:
    """Fail before any work when the plot could not be written."""
    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise PlotUnavailableError(f"--plot {path}: the file name must end in .png or .svg")
    _pyplot()


def _number(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return math.nan  # a gap in the line


def plot_history(entries: list[LogEntry], metrics: list[str], path: str) -> None:
    """One panel per metric plus one for ‖Δθ‖/‖θ‖, oldest commit on the left."""
    pyplot = _pyplot()
    oldest_first = list(reversed(entries))
    labels = [str(e.commit.id)[:7] for e in oldest_first]
    panels = [(name, [_number(e.metrics.get(name)) for e in oldest_first]) for name in metrics]
    panels.append(("‖Δθ‖/‖θ‖", [_number(e.diff.summary.relative_change) for e in oldest_first]))
    figure, axes = pyplot.subplots(
        len(panels), 1, sharex=True, figsize=(8, 1.8 * len(panels) + 0.8), squeeze=False
    )
    positions = list(range(len(oldest_first)))
    for axis, (name, values) in zip(axes[:, 0], panels, strict=True):
        axis.plot(positions, values, marker="o")
        axis.set_ylabel(name)
        axis.grid(True, alpha=0.3)
    bottom = axes[-1, 0]
    bottom.set_xticks(positions)
    bottom.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    bottom.set_xlabel("commit")
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
