"""``git theta install`` / ``git theta uninstall``."""

from __future__ import annotations

import argparse

from ..gitrepo import GitRepo, NotARepositoryError
from ..installation import install, uninstall


def _add_scope(parser: argparse.ArgumentParser, default_help: str) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--global",
        dest="scope",
        action="store_const",
        const="global",
        help=f"~/.gitconfig {default_help}",
    )
    scope.add_argument(
        "--local",
        dest="scope",
        action="store_const",
        const="local",
        help="this repository's .git/config",
    )
    scope.add_argument(
        "--system", dest="scope", action="store_const", const="system", help="the system gitconfig"
    )
    parser.set_defaults(scope="global")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "install",
        help="configure the theta filter and install hooks",
        description="Write filter.theta.process and filter.theta.required=true to git config, "
        "and merge.theta.driver for tensor-level merges (docs/merge.md), "
        "and install the hooks from hooks/ into the current repository (if in one). "
        "Existing hooks are kept and run after ours. A hooks directory that git tracks "
        "(core.hooksPath in the work tree) is left alone, and the line to add is printed.",
    )
    _add_scope(p, "(default)")
    p.add_argument(
        "--skip-hooks", action="store_true", help="do not install hooks into the current repository"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="install the hooks even into a hooks directory that git tracks, renaming its "
        "hooks to <name>.pre-theta and running them after ours",
    )
    p.set_defaults(run=run_install)

    p = subparsers.add_parser(
        "uninstall",
        help="remove the theta filter configuration and hooks",
        description="Remove the filter.theta and merge.theta sections at the chosen scope, "
        "and our hooks from the current repository, restoring any hook they had chained.",
    )
    _add_scope(p, "(default)")
    p.set_defaults(run=run_uninstall)


def _repo_or_none(scope: str) -> GitRepo | None:
    """The repository here; outside one, None, except for ``--local``, which needs it
    (then the error names the directory, as any command run outside a repository)."""
    try:
        return GitRepo.discover()
    except NotARepositoryError:
        if scope == "local":
            raise
        return None


def run_install(args: argparse.Namespace) -> int:
    repo = _repo_or_none(args.scope)
    for line in install(args.scope, repo, with_hooks=not args.skip_hooks, force_hooks=args.force):
        print(line)
    return 0


def run_uninstall(args: argparse.Namespace) -> int:
    for line in uninstall(args.scope, _repo_or_none(args.scope)):
        print(line)
    return 0
