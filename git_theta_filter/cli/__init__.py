"""``git-theta``: the command line. Each command is a thin module over the core."""

from __future__ import annotations

import sys
from importlib import import_module
from typing import TYPE_CHECKING

from .. import __version__
from ._errors import run_reporting

if TYPE_CHECKING:
    import argparse

__all__ = ["main", "COMMANDS"]

# name -> module in this package; each module has register(subparsers) and run(args) -> int.
COMMANDS = {
    "install": "install",
    "uninstall": "install",
    "track": "track",
    "untrack": "track",
    "ls-files": "ls_files",
    "du": "du",
    "fsck": "fsck",
    "gc": "gc",
    "prune": "gc",
    "repack": "repack",
    "push": "push",
    "fetch": "fetch",
    "pull": "pull",
    "filter-process": "filter_process",
    "hook": "hook",
    "log": "log",
    "diff": "diff",
    "metrics": "metrics",
    "merge": "merge",
    "show": "show",
    "migrate": "migrate",
    "commit": "commit",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for ``command`` alone when it is one of ours; otherwise for every command.

    Importing every command module costs about 0.4 s (numpy, pygit2), and git
    starts ``filter-process`` for every add, status and checkout.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="git theta",
        description="Version PyTorch model files in Git: byte-exact, deduplicated per tensor.",
    )
    parser.add_argument("--version", action="version", version=f"git-theta-filter {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    modules = [COMMANDS[command]] if command in COMMANDS else dict.fromkeys(COMMANDS.values())
    for module_name in modules:
        import_module(f".{module_name}", __name__).register(subparsers)
    return parser


def unknown_command_message(name: str) -> str:
    """What git says for a command it does not know, with the closest ones (``trak`` → track).

    As in git, only the commands that tie for the closest match are suggested.
    """
    import difflib  # only here: the filter process starts through main() for every add

    lines = [f"git theta: '{name}' is not a git-theta command. See 'git theta --help'."]
    scores = {command: difflib.SequenceMatcher(None, name, command).ratio() for command in COMMANDS}
    best = max(scores.values())
    if best >= 0.6:
        similar = [command for command, score in scores.items() if score == best]
        lines += ["", f"The most similar command{' is' if len(similar) == 1 else 's are'}"]
        lines += [f"\t{command}" for command in similar]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["filter-process"]:
        # What git runs for every add, status and checkout, and waits on: it
        # takes no options, so argparse is neither imported nor built for it.
        from .filter_process import run

        return run_reporting(lambda: run(None))
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        print(unknown_command_message(argv[0]), file=sys.stderr)
        return 2
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    from ..store.codec import tune_allocator

    tune_allocator()  # this process is ours: see tune_allocator
    return run_reporting(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
