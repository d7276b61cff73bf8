"""``git theta-log`` (also ``git theta log``): metrics and parameter norms over history.

Grammar, as git log's: ``git theta-log [<options>] [<revision-range>] [[--] <path>...]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..gitrepo import GitRepo
from ..history import open_pygit2
from ..metrics import declared_metrics_files, resolve_metric
from ..revisions import Pathspec, parse_range, ref_tips, split_arguments
from ..stats import Statistician
from ..theta_log import (
    LogEntry,
    best_entry,
    entry_to_json,
    log_to_json,
    rank_metric_columns,
    several_sources,
    theta_log,
)
from ..units import human_bytes, json_number
from ._format import Colour, Styled, format_value, sparkline, table_lines
from ._output import print_json, replacing_output
from ._standalone import register_alias, split_at_separator, standalone_main

__all__ = ["main", "register", "run_argv", "build_parser"]

# Without --metric, the table takes as many of the ranked metrics as the terminal's width allows
# (this width when the output is not a terminal and COLUMNS is unset); a plot takes this many.
FALLBACK_WIDTH = 120
PLOT_METRICS = 6
_SUBJECT_WIDTH = 40
_FETCH_HINT = "run `git theta fetch` to download them"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="git theta-log",
        description="One row per commit that changed a tracked model file: its metrics, "
        "the parameter norm ‖θ‖, the relative change ‖Δθ‖/‖θ‖ against the parent's version, "
        'θ\'s tensors changed, the new bytes (docs/store.md, "Sizes") and a NaN/Inf flag. '
        "Without --metric, the metrics that change and those named like metrics, as many as "
        "fit the terminal. Revisions and paths as for `git log`; with several revisions, "
        "--all or --branches, each row names the revision its commit was reached from.",
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
        "--all",
        dest="all_refs",
        action="store_true",
        help="as if every ref (branches, tags, remotes) and HEAD were given as a revision",
    )
    parser.add_argument(
        "--branches",
        action="append",
        metavar="PATTERN",
        help="--branches[=PATTERN]: as if every branch (matching the shell glob PATTERN) were "
        "given as a revision",
    )
    parser.add_argument(
        "--metric",
        action="append",
        metavar="NAME",
        help="a metric column (repeatable); a unique dotted suffix of the name is enough",
    )
    parser.add_argument(
        "--best",
        metavar="NAME",
        help="print the commit with the best value of metric NAME, across every revision given",
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
        "--plot",
        metavar="FILE",
        help="draw the metrics and ‖Δθ‖/‖θ‖ to FILE.png or FILE.svg, one line per file and "
        "revision",
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


def _git_options(argv: list[str]) -> list[str]:
    """``--branches`` alone means every branch; its pattern, as in git, only follows ``=``."""
    return ["--branches=" if argument == "--branches" else argument for argument in argv]


def run_argv(argv: list[str]) -> int:
    before, after = split_at_separator(argv)
    parser = build_parser()
    args = parser.parse_intermixed_args(_git_options(before))
    if args.direction and not args.best:
        parser.error("--min and --max go with --best")
    if args.plot:
        from ..plot import check_plot_target

        check_plot_target(args.plot)
    repo = GitRepo.discover()
    git = open_pygit2(repo)
    revisions, paths = split_arguments(git, args.revisions, after, Path.cwd())
    pathspec = Pathspec(paths, Path.cwd(), repo.worktree)
    refs = ref_tips(git, args.all_refs, args.branches or ())
    walk = parse_range(git, revisions, refs if args.all_refs or args.branches else None)
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
        metric = resolve_metric(args.best, known)
        return _print_best(entries, metric, args.direction, args.json, several_sources(walk))
    chosen = [resolve_metric(name, known) for name in args.metric] if args.metric else None
    show_source = several_sources(walk)
    if args.json:
        print_json(log_to_json(entries, chosen))
    else:
        _print_table(entries, chosen, show_source)
    if args.plot:
        from ..plot import plot_history

        target = Path(args.plot)
        with replacing_output(target, repo.worktree) as temporary:
            plot_history(
                entries, chosen or rank_metric_columns(entries)[:PLOT_METRICS], str(temporary)
            )
        print(f"git-theta: wrote {args.plot}", file=sys.stderr)
    count = sum(1 for entry in entries if entry.diff.summary.missing_objects)
    if count:
        print(
            f"git-theta: norms unavailable for {count} commit(s): tensor objects are missing from "
            f"the local store; {_FETCH_HINT}",
            file=sys.stderr,
        )
    return 0


def _print_best(
    entries: list[LogEntry], metric: str, direction: str | None, as_json: bool, show_source: bool
) -> int:
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
    source = f"{best.source}  " if show_source and best.source else ""
    print(
        f"{best.commit.id}  {best.timestamp.date()}  {source}{best.path}  "
        f"{metric}={format_value(value)}  ({word} of {considered})  {best.subject}"
    )
    return 0


def _row(
    entry: LogEntry, metrics: list[str], show_path: bool, show_source: bool
) -> list[str | Styled]:
    summary = entry.diff.summary
    if entry.status == "removed":
        norm_cells: list[str | Styled] = [Styled("removed", "red"), "", ""]
    elif not entry.norms_available:
        norm_cells = [Styled("n/a", "yellow"), Styled("n/a", "yellow"), ""]
    else:
        flag = Styled("NaN/Inf", "red") if summary.non_finite else ""
        norm_cells = [format_value(summary.new_norm), format_value(summary.relative_change), flag]
    subject = entry.subject
    if len(subject) > _SUBJECT_WIDTH:
        subject = subject[: _SUBJECT_WIDTH - 1] + "…"
    return [
        Styled(str(entry.commit.id)[:7], "yellow"),
        str(entry.timestamp.date()),
        *([Styled(entry.source or "", "green")] if show_source else []),
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


def _fit_columns(
    header: Sequence[str], rows: list[list[str | Styled]], first_metric: int, width: int
) -> int:
    """How many metric columns, from ``first_metric`` on, fit in ``width`` (at least one)."""
    cells = [list(header)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    metric_count = len(header) - first_metric - 5  # ‖θ‖, ‖Δθ‖/‖θ‖, changed, new, flag follow
    fixed = widths[:first_metric] + widths[first_metric + metric_count :]
    used = sum(fixed) + 2 * (len(fixed) - 1)
    fitting = 0
    for column in widths[first_metric : first_metric + metric_count]:
        if used + 2 + column > width and fitting:
            break
        used += 2 + column
        fitting += 1
    return fitting


def _print_table(entries: list[LogEntry], chosen: list[str] | None, show_source: bool) -> None:
    """The table; without ``chosen`` metrics, the ranked ones that fit the terminal."""
    if not entries:
        return
    show_path = len({entry.path for entry in entries}) > 1
    metrics = chosen if chosen is not None else rank_metric_columns(entries)

    def layout(names: list[str]) -> tuple[list[str], list[list[str | Styled]]]:
        header = [
            "commit",
            "date",
            *(["branch"] if show_source else []),
            *(["path"] if show_path else []),
            "subject",
            *names,
            "‖θ‖",
            "‖Δθ‖/‖θ‖",
            "changed",
            "new",
            "",
        ]
        return header, [_row(e, names, show_path, show_source) for e in entries]

    header, rows = layout(metrics)
    first_metric = 3 + show_source + show_path
    if chosen is None and metrics:
        width = shutil.get_terminal_size((FALLBACK_WIDTH, 24)).columns
        fitting = _fit_columns(header, rows, first_metric, width)
        if fitting < len(metrics):
            left_out = ", ".join(metrics[fitting : fitting + 3])
            more = ", …" if len(metrics) > fitting + 3 else ""
            print(
                f"git-theta: showing {fitting} of {len(metrics)} metrics ({left_out}{more} left "
                "out to fit the width); choose with --metric",
                file=sys.stderr,
            )
            metrics = metrics[:fitting]
            header, rows = layout(metrics)
    right = tuple(range(first_metric, len(header) - 1))
    colour = Colour(sys.stdout)
    for line in table_lines(header, rows, colour, right=right):
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
