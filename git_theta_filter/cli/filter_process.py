"""``git theta filter-process``: the long-running filter git starts (filter.theta.process).

A shell over :mod:`git_theta_filter.filter_session` (the filter, made on the
first request) and :mod:`git_theta_filter.filter_protocol` (git's protocol).
The handshake is answered before anything else is imported (filter_handshake.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from ..filter_handshake import AnsweredGit, answer_git
from ..filter_protocol import serve
from ..filter_session import FilterOnFirstRequest
from ._errors import report_error

if TYPE_CHECKING:
    import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "filter-process",
        help="the filter git runs (not for direct use)",
        description="Speak git's long-running filter protocol on stdin/stdout. Git starts this "
        "through filter.theta.process. "
        "Set GIT_THETA_SKIP_SMUDGE=1 to check manifests out as they are.",
    )
    p.set_defaults(run=run)


def run(
    args: argparse.Namespace | None, answered: AnsweredGit | Exception | None = None
) -> NoReturn:
    """Serve git until it closes the pipe, then end the process at once (``answered``: the
    handshake the filter's client answered before loading ``site``, or its error).

    git waits for the filter to exit at the end of every add and commit, and tearing the
    interpreter down (every loaded module, the store's state) took 6-10 ms of a ~70 ms
    filter run. By then every answer is written and the writer lock released.
    """
    if isinstance(answered, Exception):
        raise answered
    serve_git(answered)
    os._exit(0)


def serve_git(answered: AnsweredGit | None = None) -> int:
    """Speak git's filter protocol on stdin and stdout until git closes them (also what a
    filter server's child runs, in place of a new process: filter_server.py)."""
    git = answer_git() if answered is None else answered
    with contextlib.ExitStack() as resources:
        handler = FilterOnFirstRequest(resources)
        serve(git.reader, git.writer, handler, report_error, git.capabilities)
    for stream in (git.stdout, sys.stdout, sys.stderr):
        stream.flush()
    return 0
