"""Commands that are both ``git theta <name>`` and a ``git-theta-<name>`` script of their own.

They take git's grammar, ``[<options>] [<revision>...] [--] [<path>...]``,
where options may also follow revisions and ``--`` separates paths. argparse
cannot tell where a ``--`` was, so each such command parses its own argv: the
``git theta <name>`` alias forwards its arguments untouched.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ._errors import run_reporting

__all__ = ["split_at_separator", "register_alias", "standalone_main"]

RunArgv = Callable[[list[str]], int]


def split_at_separator(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """The arguments before the first ``--``, and those after it (None when there is none)."""
    if "--" not in argv:
        return list(argv), None
    index = argv.index("--")
    return argv[:index], argv[index + 1 :]


def register_alias(
    subparsers: argparse._SubParsersAction, name: str, help: str, run_argv: RunArgv
) -> None:
    # No prefix character can start an argument here, so every argument,
    # options and `--` included, reaches the command's own parser.
    parser = subparsers.add_parser(name, help=help, add_help=False, prefix_chars="\0")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    parser.set_defaults(run=lambda args: run_argv(args.argv))


def standalone_main(run_argv: RunArgv, argv: list[str] | None = None) -> int:
    """The console script's entry point: errors become one line and git's exit codes."""
    return run_reporting(lambda: run_argv(sys.argv[1:] if argv is None else argv))
