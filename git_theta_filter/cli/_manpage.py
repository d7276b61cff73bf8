"""Man pages generated from the argparse parsers, so ``--help`` works through git.

``git theta --help`` and ``git theta-log --help`` are turned by git into
``git help <name>``, which runs ``man git-<name>``. The pages are built from
the same parsers as ``-h``, committed under ``man/man1`` (a test keeps them
current) and installed to ``<prefix>/share/man/man1``, where man finds them
from PATH.

    python -m git_theta_filter.cli._manpage man/man1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import __version__

__all__ = ["render_page", "pages", "main"]


def _roff(text: str) -> str:
    """Escape text for roff: backslashes, and dots or quotes at the start of a line."""
    text = text.replace("\\", "\\e")
    return "\n".join(
        ("\\&" + line) if line[:1] in (".", "'") else line for line in text.splitlines()
    )


def _metavar(action: argparse.Action, default: str) -> str:
    """The name shown for an argument's value; argparse allows a tuple, one per value."""
    if isinstance(action.metavar, tuple):
        return " ".join(action.metavar)
    return action.metavar or default


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            names = ", ".join(action.option_strings)
            if action.nargs != 0:
                names += " " + _metavar(action, action.dest.upper())
        else:
            names = _metavar(action, action.dest)
        lines += [".TP", f"\\fB{_roff(names)}\\fR", _roff(action.help or "")]
    return lines


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage: ").split())


def render_page(name: str, summary: str, parser: argparse.ArgumentParser) -> str:
    """One man(7) page for ``parser``; subcommands get a section each."""
    lines = [
        f'.TH "{name.upper()}" 1 "" "git-theta-filter {__version__}" "git-theta-filter manual"',
        ".SH NAME",
        f"{name} \\- {_roff(summary)}",
        ".SH SYNOPSIS",
        _roff(_usage(parser)),
        ".SH DESCRIPTION",
        _roff(parser.description or summary),
        ".SH OPTIONS",
        *_options(parser),
    ]
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if subparsers:
        lines.append(".SH COMMANDS")
        helps = {choice.dest: choice.help for choice in subparsers[0]._choices_actions}
        for command, subparser in subparsers[0].choices.items():
            lines += [".SS " + _roff(command), _roff(helps.get(command) or "")]
            if subparser.description:
                lines += [".PP", _roff(subparser.description)]
            lines += [".PP", "\\fBUsage:\\fR " + _roff(_usage(subparser)), *_options(subparser)]
    lines += [".SH SEE ALSO", "The README and docs/ of git-theta-filter.", ""]
    return "\n".join(lines)


def pages() -> dict[str, str]:
    """File name -> page text, for every command git can send to ``man``."""
    from . import build_parser, diff, log

    return {
        "git-theta.1": render_page(
            "git-theta", "version PyTorch model files in Git", build_parser()
        ),
        "git-theta-log.1": render_page(
            "git-theta-log", "metric and parameter-norm history of model files", log.build_parser()
        ),
        "git-theta-diff.1": render_page(
            "git-theta-diff", "per-tensor changes between commits", diff.build_parser()
        ),
    }


def main(argv: list[str] | None = None) -> int:
    target = Path((argv if argv is not None else sys.argv[1:] or ["man/man1"])[0])
    target.mkdir(parents=True, exist_ok=True)
    for file_name, text in pages().items():
        (target / file_name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
