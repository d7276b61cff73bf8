"""``git theta-diff`` (also ``git theta diff``): tensor-level changes between two versions.

Grammar, as git diff's:
``git theta-diff [<options>] [--cached] [<commit> [<commit>]] [--] [<path>...]``.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import sys
from collections.abc import Callable
from pathlib import Path

from ..gitrepo import GitRepo
from ..history import open_pygit2
from ..metrics import declared_metrics_files
from ..revisions import Pathspec, split_arguments
from ..stats import Statistician
from ..tensor_diff import MetricChange, TensorDiff, TensorFilter, TensorGroup, TensorStatus
from ..theta_diff import USAGE, FileDiff, ThetaDiff, diff_snapshots, diff_to_json, resolve_sides
from ..units import human_bytes
from ._format import (
    Colour,
    Styled,
    format_change,
    format_value,
    markdown_code,
    markdown_table,
    table_lines,
)
from ._output import print_json
from ._standalone import register_alias, split_at_separator, standalone_main

__all__ = ["main", "register", "run_argv", "build_parser"]

_STATUS_COLOURS = {
    "modified": "yellow",
    "added": "green",
    "removed": "red",
    "retyped": "cyan",
    "unchanged": "dim",
}
_FETCH_HINT = "run `git theta fetch` to download them"


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="git theta-diff",
        description="For each tracked model file that differs: every model tensor's status, "
        "norms, ‖new−old‖, relative change, cosine similarity, max |Δ| and fraction of elements "
        "changed; optimizer state in one summary line; a summary with the global ‖Δθ‖/‖θ‖; and "
        "the metrics that changed. Revisions and paths as for `git diff`.",
        usage=USAGE,
    )
    parser.add_argument(
        "--cached", "--staged", action="store_true", help="compare the index with a commit (HEAD)"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--json", action="store_true", help="machine-readable output (docs/json-schema.md)"
    )
    output.add_argument("--md", action="store_true", help="Markdown tables")
    output.add_argument("--stat", action="store_true", help="one line per file")
    parser.add_argument(
        "--sort",
        choices=("rel", "delta", "name"),
        default="rel",
        help="order tensors by relative change (default), by ‖Δ‖, or by name",
    )
    parser.add_argument("--top", type=_count, metavar="N", help="show at most N tensors per file")
    parser.add_argument(
        "--all",
        action="store_true",
        help="also list optimizer state tensor by tensor, and unchanged tensors and metrics",
    )
    parser.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="compare only tensors whose name matches GLOB (repeatable; `*` matches dots too); "
        "the summary is then over those",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help="leave out tensors whose name matches GLOB (repeatable)",
    )
    parser.add_argument("revisions", nargs="*", help=argparse.SUPPRESS)
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    register_alias(
        subparsers, "diff", "tensor-level changes of model files between versions", run_argv
    )


def main(argv: list[str] | None = None) -> int:
    return standalone_main(run_argv, argv)


def run_argv(argv: list[str]) -> int:
    before, after = split_at_separator(argv)
    args = build_parser().parse_intermixed_args(before)
    repo = GitRepo.discover()
    git = open_pygit2(repo)
    revisions, paths = split_arguments(git, args.revisions, after, Path.cwd())
    pathspec = Pathspec(paths, Path.cwd(), repo.worktree)
    old, new = resolve_sides(repo, git, revisions, args.cached)
    warned: set[str] = set()

    def warn(message: str) -> None:
        if message not in warned:
            warned.add(message)
            print(f"git-theta: warning: {message}", file=sys.stderr)

    diff = diff_snapshots(
        Statistician.for_repo(repo.theta_dir),
        old,
        new,
        pathspec,
        declared_metrics_files(repo, git),
        args.all,
        warn,
        select=_name_filter(args.include, args.exclude),
    )
    listed = _tensor_selector(args.sort, args.top, args.all, every_group=args.json or args.all)
    if args.json:
        print_json(diff_to_json(diff, listed))
    elif args.md:
        _print_markdown(diff, listed, args.all)
    elif args.stat:
        _print_stat(diff)
    else:
        _print_text(diff, listed, Colour(sys.stdout), args.all)
    if diff.missing_objects:
        print(
            f"git-theta: some norms are unavailable: {diff.missing_objects} tensor object(s) are "
            f"missing from the local store; {_FETCH_HINT}",
            file=sys.stderr,
        )
    return 0


def _sort_key(order: str) -> Callable[[TensorDiff], tuple]:
    rank = {
        TensorStatus.MODIFIED: 0,
        TensorStatus.RETYPED: 1,
        TensorStatus.ADDED: 2,
        TensorStatus.REMOVED: 3,
        TensorStatus.UNCHANGED: 4,
    }

    def by_number(value: float | None) -> float:
        # Largest first; unknown numbers after known ones; NaN counts as the largest change.
        if value is None:
            return math.inf
        return -math.inf if math.isnan(value) else -value

    if order == "name":
        return lambda t: (t.name,)
    if order == "delta":
        return lambda t: (rank[t.status], by_number(t.delta_norm), t.name)
    return lambda t: (rank[t.status], by_number(t.relative_change), t.name)


def _name_filter(include: list[str] | None, exclude: list[str] | None) -> TensorFilter | None:
    """Tensor names that match an ``--include`` glob (when given) and no ``--exclude`` glob."""
    if not include and not exclude:
        return None

    def select(name: str) -> bool:
        if include and not any(fnmatch.fnmatchcase(name, glob) for glob in include):
            return False
        return not any(fnmatch.fnmatchcase(name, glob) for glob in exclude or ())

    return select


def _tensor_selector(
    order: str, top: int | None, show_all: bool, every_group: bool
) -> Callable[[FileDiff], list[TensorDiff]]:
    """The tensors to list: model tensors first, then optimizer state (only with
    ``every_group``), each in ``order``; unchanged ones only with ``show_all``.
    """
    key = _sort_key(order)

    def select(file: FileDiff) -> list[TensorDiff]:
        tensors = [
            t
            for t in file.changes.tensors
            if (show_all or t.status is not TensorStatus.UNCHANGED)
            and (every_group or t.group is TensorGroup.MODEL)
        ]
        tensors.sort(key=lambda t: (t.group is TensorGroup.OPTIMIZER, *key(t)))
        return tensors[:top] if top is not None else tensors

    return select


def _non_finite(tensor: TensorDiff) -> str:
    parts = []
    for label, stats in (("old", tensor.old_stats), ("new", tensor.new_stats)):
        if stats is not None and (stats.nan_count or stats.inf_count):
            parts.append(f"{label}: {stats.nan_count} NaN, {stats.inf_count} Inf")
    return "; ".join(parts)


def _shape(tensor: TensorDiff) -> tuple[str, str]:
    def describe(entry) -> tuple[str, str]:
        return entry.dtype, "[" + ",".join(map(str, entry.shape)) + "]"

    old = describe(tensor.old) if tensor.old else None
    new = describe(tensor.new) if tensor.new else None
    if old and new and old != new:
        return (
            old[0] if old[0] == new[0] else f"{old[0]}→{new[0]}",
            old[1] if old[1] == new[1] else f"{old[1]}→{new[1]}",
        )
    return old or new  # type: ignore[return-value]


def _tensor_cells(tensor: TensorDiff) -> list[str]:
    """The numbers of one tensor; ``n/a`` where they need an object that is missing,
    ``-`` where none apply.
    """
    dtype, shape = _shape(tensor)
    unknown = "n/a" if tensor.objects_missing else "-"
    fraction = tensor.changed_fraction
    return [
        tensor.name,
        dtype,
        shape,
        format_value(
            tensor.old_stats.norm if tensor.old_stats else None, unknown if tensor.old else "-"
        ),
        format_value(
            tensor.new_stats.norm if tensor.new_stats else None, unknown if tensor.new else "-"
        ),
        format_value(tensor.delta_norm, unknown if tensor.old and tensor.new else "-"),
        format_value(tensor.relative_change, unknown if tensor.old and tensor.new else "-"),
        format_value(tensor.cosine_similarity, unknown if tensor.old and tensor.new else "-"),
        format_value(
            tensor.delta.max_abs_delta if tensor.delta else None,
            unknown if tensor.old and tensor.new else "-",
        ),
        f"{fraction:.1%}" if fraction is not None else "-",
    ]


_TENSOR_HEADER = [
    "tensor",
    "dtype",
    "shape",
    "‖old‖",
    "‖new‖",
    "‖Δ‖",
    "‖Δ‖/‖old‖",
    "cos",
    "max|Δ|",
    "changed",
]


def _summary_line(file: FileDiff) -> str:
    """The model's status counts, θ's changed tensors and ‖Δθ‖/‖θ‖, and the new bytes."""
    summary = file.changes.summary
    counts = {status: 0 for status in TensorStatus}
    for tensor in file.changes.tensors:
        if tensor.group is TensorGroup.MODEL:
            counts[tensor.status] += 1
    parts = [
        f"{counts[TensorStatus.MODIFIED]} modified",
        f"{counts[TensorStatus.ADDED]} added",
        f"{counts[TensorStatus.REMOVED]} removed",
    ]
    if counts[TensorStatus.RETYPED]:
        parts.append(f"{counts[TensorStatus.RETYPED]} retyped")
    parts.append(f"θ changed {summary.theta_changed}/{summary.theta_tensors}")
    if summary.missing_objects:
        parts.append("‖Δθ‖/‖θ‖ n/a (objects missing)")
    else:
        parts.append(f"‖Δθ‖/‖θ‖ {format_value(summary.relative_change)}")
    parts.append(f"new {human_bytes(file.new_bytes)}")
    return ", ".join(parts)


def _optimizer_line(file: FileDiff, expanded: bool) -> str | None:
    """Optimizer state in one line (None when the file has none)."""
    summary = file.changes.summary
    if not summary.optimizer_tensors:
        return None
    norm = "n/a" if summary.missing_objects else format_value(summary.optimizer_delta_norm)
    line = (
        f"optimizer state: {summary.optimizer_changed} of {summary.optimizer_tensors} "
        f"tensors changed, ‖Δ‖ {norm}"
    )
    return line if expanded or not summary.optimizer_changed else f"{line} (--all lists them)"


def _metric_rows(metrics: list[MetricChange]) -> list[list[str]]:
    return [
        [m.name, format_value(m.old), format_value(m.new), format_change(m.change)] for m in metrics
    ]


def _by_group(tensors: list[TensorDiff]) -> tuple[list[TensorDiff], list[TensorDiff]]:
    model = [t for t in tensors if t.group is TensorGroup.MODEL]
    return model, [t for t in tensors if t.group is TensorGroup.OPTIMIZER]


def _print_text(
    diff: ThetaDiff,
    listed: Callable[[FileDiff], list[TensorDiff]],
    colour: Colour,
    expanded: bool,
) -> None:
    def print_tensors(tensors: list[TensorDiff]) -> None:
        rows: list[list[str | Styled]] = []
        for tensor in tensors:
            status = Styled(tensor.status.value, _STATUS_COLOURS[tensor.status.value])
            rows.append([status, *_tensor_cells(tensor), _non_finite(tensor)])
        header = ["status", *_TENSOR_HEADER, ""]
        for line in table_lines(header, rows, colour, right=tuple(range(4, 11)), indent="  "):
            print(line)

    for number, file in enumerate(diff.files):
        if number:
            print()
        print(
            colour(f"{file.path}", "bold")
            + f"  ({diff.old.label} → {diff.new.label}, file {file.status})"
        )
        model, optimizer = _by_group(listed(file))
        if model:
            print_tensors(model)
        optimizer_line = _optimizer_line(file, expanded)
        if optimizer_line:
            print("  " + optimizer_line)
        if optimizer:
            print_tensors(optimizer)
        print("  " + _summary_line(file))
        if file.metrics:
            print()
            for line in table_lines(
                ["Metric", "old", "new", "change"],
                _metric_rows(file.metrics),
                colour,
                right=(1, 2, 3),
                indent="  ",
            ):
                print(line)


def _print_stat(diff: ThetaDiff) -> None:
    width = max((len(f.path) for f in diff.files), default=0)
    for file in diff.files:
        summary = file.changes.summary
        optimizer = (
            f"; optimizer state {summary.optimizer_changed}/{summary.optimizer_tensors} changed"
            if summary.optimizer_tensors
            else ""
        )
        print(f"{file.path.ljust(width)} | {_summary_line(file)}{optimizer}")


def _print_markdown(
    diff: ThetaDiff, listed: Callable[[FileDiff], list[TensorDiff]], expanded: bool
) -> None:
    def print_tensors(tensors: list[TensorDiff]) -> None:
        rows = [[t.status.value, *_tensor_cells(t), _non_finite(t)] for t in tensors]
        rows = [
            [markdown_code(row[1]) if i == 1 else cell for i, cell in enumerate(row)]
            for row in rows
        ]
        for line in markdown_table(["status", *_TENSOR_HEADER, "NaN/Inf"], rows):
            print(line)
        print()

    for number, file in enumerate(diff.files):
        if number:
            print()
        print(f"### {markdown_code(file.path)} ({diff.old.label} → {diff.new.label})")
        print()
        model, optimizer = _by_group(listed(file))
        if model:
            print_tensors(model)
        optimizer_line = _optimizer_line(file, expanded)
        if optimizer_line:
            print(optimizer_line)
            print()
        if optimizer:
            print_tensors(optimizer)
        print(_summary_line(file))
        if file.metrics:
            print()
            rows = [[markdown_code(name), *cells] for name, *cells in _metric_rows(file.metrics)]
            for line in markdown_table(["Metric", "old", "new", "change"], rows):
                print(line)


if __name__ == "__main__":
    sys.exit(main())
