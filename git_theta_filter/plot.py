"""``git theta-log --plot``: metrics and ‖Δθ‖/‖θ‖ over commits, drawn with matplotlib.

One panel per metric, plus one for ‖Δθ‖/‖θ‖. Each commit has one x position
(oldest on the left), whatever number of files it changed; each model file,
and with several revisions each revision, is a line of its own, named in the
legend. A revision's line runs through every shown commit reachable from it,
so branches share their common history and then part.

matplotlib is an optional extra (``pip install 'git-theta-filter[plot]'``);
it is imported only here, and only when a plot is asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ThetaError
from .theta_log import LogEntry

__all__ = [
    "PlotUnavailableError",
    "Panel",
    "check_plot_target",
    "plot_panels",
    "plot_history",
]

PLOT_SUFFIXES = (".png", ".svg")
RELATIVE_CHANGE = "‖Δθ‖/‖θ‖"
_MAX_TICK_LABELS = 24


class PlotUnavailableError(ThetaError):
    """A plot was asked for but cannot be drawn."""


@dataclass
class Panel:
    """One quantity over commits: a line of (x, y) points per file or revision."""

    name: str
    lines: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


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


def _line_names(entry: LogEntry, several_paths: bool) -> list[str]:
    """The lines an entry's point belongs to: its file, within each revision that reaches it."""
    if not entry.sources:
        return [entry.path]
    if several_paths:
        return [f"{source}: {entry.path}" for source in entry.sources]
    return list(entry.sources)


def plot_panels(entries: list[LogEntry], metrics: list[str]) -> tuple[list[str], list[Panel]]:
    """The x labels (short commit ids, oldest first) and the panels to draw."""
    commits: list[str] = []
    for entry in reversed(entries):  # entries are newest first
        if str(entry.commit.id) not in commits:
            commits.append(str(entry.commit.id))
    x_of = {commit: x for x, commit in enumerate(commits)}
    several_paths = len({entry.path for entry in entries}) > 1
    panels = [Panel(name) for name in [*metrics, RELATIVE_CHANGE]]
    for entry in reversed(entries):
        values = [_number(entry.metrics.get(name)) for name in metrics]
        values.append(_number(entry.diff.summary.relative_change))
        x = x_of[str(entry.commit.id)]
        for panel, value in zip(panels, values, strict=True):
            for line in _line_names(entry, several_paths):
                panel.lines.setdefault(line, []).append((x, value))
    for panel in panels:
        for points in panel.lines.values():
            points.sort()
    return [commit[:7] for commit in commits], panels


def _literal(name: str) -> str:
    """``name`` as matplotlib draws it, character for character. Between two ``$`` it would
    read mathtext: a committed metric name or path drawn other than it is, or one whose
    parse fails (``"$" + "{" * 120``: RecursionError), failing the plot."""
    return name.replace("$", r"\$")


def plot_history(entries: list[LogEntry], metrics: list[str], path: str) -> None:
    """Draw :func:`plot_panels` to ``path`` (.png or .svg)."""
    pyplot = _pyplot()
    labels, panels = plot_panels(entries, metrics)
    figure, axes = pyplot.subplots(
        len(panels), 1, sharex=True, figsize=(9, 2.0 * len(panels) + 0.8), squeeze=False
    )
    legend = any(len(panel.lines) > 1 for panel in panels)
    for axis, panel in zip(axes[:, 0], panels, strict=True):
        for name, points in panel.lines.items():
            xs, ys = zip(*points, strict=True)
            axis.plot(xs, ys, marker="o", markersize=3, label=_literal(name))
        # The name above the panel, where a long dotted name has room; plain tick numbers.
        axis.set_title(_literal(panel.name), fontsize=9, loc="left")
        axis.ticklabel_format(axis="y", style="plain", useOffset=False)
        axis.tick_params(axis="y", labelsize=8)
        axis.grid(True, alpha=0.3)
    if legend:
        axes[0, 0].legend(fontsize=8, loc="best")
    bottom = axes[-1, 0]
    step = max(1, math.ceil(len(labels) / _MAX_TICK_LABELS))
    positions = list(range(0, len(labels), step))
    bottom.set_xticks(positions)
    bottom.set_xticklabels([labels[x] for x in positions], rotation=45, ha="right", fontsize=8)
    bottom.set_xlabel("commit")
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
