"""``git theta-log`` (also ``git theta log``): metrics and parameter norms over history.

Grammar, as git log's: ``git theta-log [<options>] [<revision-range>] [[--] <path>...]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ..gitrepo import GitRepo
from ..history import open_pygit2
from ..metrics import declared_metrics_files, resolve_metric
from ..revisions import Pathspec, parse_range, split_arguments
from ..stats import Statistician
from ..theta_diff import json_number
from ..theta_log import LogEntry, best_entry, entry_to_json, log_to_json, theta_log
from ..units import human_bytes
from ._format import Colour, Styled, format_value, sparkline, table_lines
from ._output import print_json
from ._standalone import register_alias, split_at_separator, standalone_main

__all__ = ["main", "register", "run_argv", "build_parser"]

# Columns chosen without --metric: the metrics that vary over the listed commits, at most this many.
DEFAULT_METRIC_COLUMNS = 6
_FETCH_HINT = "run `git theta fetch` to download them"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="git theta-log",
        description="One row per commit that changed a tracked model file: its metrics, "
        "the parameter norm ‖θ‖, the relative change ‖Δθ‖/‖θ‖ against the parent's version, "
        "the tensors changed, the bytes newly stored and a NaN/Inf flag. "
        "Revisions and paths as for `git log`.",
        usage="git theta-log [<options>] [<revision-range>] [[--] <path>...]",
    )
    parser.add_argument(
        "-n",
        "--max-count",
        type=int,
        metavar="N",
        help="show at most N commits (a negative N, as in git, shows all)",
    )
    parser.add_argument(
        "--metric",
        action="append",
        metavar="NAME",
        help="a metric column (repeatable); a unique dotted suffix of the name is enough",
    )
    parser.add_argument(
        "--best", metavar="NAME", help="print the commit with the best value of metric NAME"
    )
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument(
        "--min",
        dest="direction",
        action="store_const",
        const="min",
        help="with --best: lowest is best (the default for losses and errors)",
    )
    direction.add_argument(
        "--max",
        dest="direction",
        action="store_const",
        const="max",
        help="with --best: highest is best (the default otherwise)",
    )
    parser.add_argument(
        "--json", action="store_true", help="machine-readable output (docs/json-schema.md)"
    )
    parser.add_argument(
        "--plot", metavar="FILE", help="draw the metrics and ‖Δθ‖/‖θ‖ to FILE.png or FILE.svg"
    )
    parser.add_argument("revisions", nargs="*", help=argparse.SUPPRESS)
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    register_alias(
        subparsers, "log", "metrics and parameter norms of model files over history", run_argv
    )


def main(argv: list[str] | None = None) -> int:
    return standalone_main(run_argv, argv)


def _warn_once() -> Callable[[str], None]:
    seen: set[str] = set()

    def warn(message: str) -> None:
        if message not in seen:
            seen.add(message)
            print(f"git-theta: warning: {message}", file=sys.stderr)

    return warn


def run_argv(argv: list[str]) -> int:
    before, after = split_at_separator(argv)
    parser = build_parser()
    args = parser.parse_intermixed_args(before)
    if args.direction and not args.best:
        parser.error("--min and --max go with --best")
    if args.plot:
        from ..plot import check_plot_target

        check_plot_target(args.plot)
    repo = GitRepo.discover()
    git = open_pygit2(repo)
    revisions, paths = split_arguments(git, args.revisions, after, Path.cwd())
    pathspec = Pathspec(paths, Path.cwd(), repo.worktree)
    walk = parse_range(git, revisions)
    # --best needs metrics only, so it reads no statistics at all.
    stats = None if args.best else Statistician.for_repo(repo.theta_dir)
    entries = theta_log(
        git,
        walk,
        pathspec,
        declared_metrics_files(repo, git),
        _warn_once(),
        stats=stats,
        max_count=args.max_count if (args.max_count or 0) >= 0 else None,
    )
    known = {name for entry in entries for name in entry.metrics}
    if args.best:
        return _print_best(entries, resolve_metric(args.best, known), args.direction, args.json)
    chosen = [resolve_metric(name, known) for name in args.metric] if args.metric else None
    if args.json:
        print_json(log_to_json(entries, chosen))
    columns = chosen if chosen is not None or args.json else _default_columns(entries)
    if not args.json:
        _print_table(entries, columns)
    if args.plot:
        from ..plot import plot_history

        plot_history(entries, columns if columns is not None else sorted(known), args.plot)
        print(f"git-theta: wrote {args.plot}", file=sys.stderr)
    count = sum(1 for entry in entries if entry.diff.summary.missing_objects)
    if count:
        print(
            f"git-theta: norms unavailable for {count} commit(s): tensor objects are missing from "
            f"the local store; {_FETCH_HINT}",
            file=sys.stderr,
        )
    return 0


def _default_columns(entries: list[LogEntry]) -> list[str]:
    names = sorted({name for entry in entries for name in entry.metrics})
    if len(entries) > 1:
        names = [n for n in names if len({repr(e.metrics.get(n)) for e in entries}) > 1]
    if len(names) > DEFAULT_METRIC_COLUMNS:
        print(
            f"git-theta: showing {DEFAULT_METRIC_COLUMNS} of {len(names)} changing metrics; "
            "choose with --metric",
            file=sys.stderr,
        )
    return names[:DEFAULT_METRIC_COLUMNS]


def _print_best(entries: list[LogEntry], metric: str, direction: str | None, as_json: bool) -> int:
    best, used = best_entry(entries, metric, direction)
    assert best is not None  # resolve_metric found the name, so some entry has it
    value = best.metrics[metric]
    if as_json:
        print_json(
            {
                "schema": "git-theta-log/1",
                "best": {
                    "metric": metric,
                    "direction": used,
                    "value": json_number(value),
                    "entry": entry_to_json(best, [metric]),
                },
            }
        )
        return 0
    considered = sum(1 for e in entries if metric in e.metrics)
    word = "lowest" if used == "min" else "highest"
    print(
        f"{best.commit.id}  {best.timestamp.date()}  {best.path}  {metric}={format_value(value)}  "
        f"({word} of {considered})  {best.subject}"
    )
    return 0


def _row(entry: LogEntry, metrics: list[str], show_path: bool) -> list[str | Styled]:
    summary = entry.diff.summary
    if entry.status == "removed":
        norm_cells: list[str | Styled] = [Styled("removed", "red"), "", ""]
    elif not entry.norms_available:
        norm_cells = [Styled("n/a", "yellow"), Styled("n/a", "yellow"), ""]
    else:
        flag = Styled("NaN/Inf", "red") if summary.non_finite else ""
        norm_cells = [format_value(summary.new_norm), format_value(summary.relative_change), flag]
    subject = entry.subject if len(entry.subject) <= 40 else entry.subject[:39] + "…"
    return [
        Styled(str(entry.commit.id)[:7], "yellow"),
        str(entry.timestamp.date()),
        *([entry.path] if show_path else []),
        subject,
        *[format_value(entry.metrics.get(name)) for name in metrics],
        norm_cells[0],
        norm_cells[1],
        f"{summary.theta_changed}/{summary.theta_tensors}"
        if entry.status != "removed"
        else str(summary.theta_changed),
        human_bytes(entry.new_bytes),
        norm_cells[2],
    ]


def _print_table(entries: list[LogEntry], metrics: list[str]) -> None:
    if not entries:
        return
    show_path = len({entry.path for entry in entries}) > 1
    header = [
        "commit",
        "date",
        *(["path"] if show_path else []),
        "subject",
        *metrics,
        "‖θ‖",
        "‖Δθ‖/‖θ‖",
        "changed",
        "new",
        "",
    ]
    first_number = 4 if show_path else 3
    right = tuple(range(first_number, len(header) - 1))
    colour = Colour(sys.stdout)
    for line in table_lines(
        header, [_row(e, metrics, show_path) for e in entries], colour, right=right
    ):
        print(line)
    if sys.stdout.isatty() and len(entries) > 1:
        _print_sparklines(entries, metrics, colour)


def _print_sparklines(entries: list[LogEntry], metrics: list[str], colour: Colour) -> None:
    """A trend line per column, oldest commit on the left."""
    oldest_first = list(reversed(entries))
    series = {name: [_number(e.metrics.get(name)) for e in oldest_first] for name in metrics}
    series["‖Δθ‖/‖θ‖"] = [e.diff.summary.relative_change for e in oldest_first]
    width = max(len(name) for name in series)
    print()
    for name, values in series.items():
        line = sparkline(values)
        if line.strip():
            print(f"{name.ljust(width)}  {colour(line, 'cyan')}")


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


if __name__ == "__main__":
    sys.exit(main())
