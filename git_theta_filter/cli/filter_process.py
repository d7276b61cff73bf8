"""``git theta filter-process``: the long-running filter git starts (filter.theta.process).

A shell over :mod:`git_theta_filter.filter_session` (the filter, made on the
first request) and :mod:`git_theta_filter.filter_protocol` (git's protocol).
Nothing but the protocol is imported before the handshake is answered.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from ..filter_protocol import serve
from ..filter_session import FilterOnFirstRequest
from ..pktline import PktLineReader, PktLineWriter, open_stdio_streams
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


def run(args: argparse.Namespace | None) -> NoReturn:
    """Serve git until it closes the pipe, then end the process at once.

    git waits for the filter to exit at the end of every add and commit, and
    tearing the interpreter down (every loaded module, the store's state)
    took 6-10 ms of a ~70 ms filter run. By then every answer is written and
    the writer lock released; only buffered output is left to flush.
    """
    serve_git()
    os._exit(0)


def serve_git() -> int:
    """Speak git's filter protocol on this process's stdin and stdout until git closes them.

    Also what a filter server's child runs (filter_server.py), in place of a new process.
    """
    stdin, stdout = open_stdio_streams()
    with contextlib.ExitStack() as resources:
        handler = FilterOnFirstRequest(resources)
        serve(PktLineReader(stdin), PktLineWriter(stdout), handler, report_error)
    for stream in (stdout, sys.stdout, sys.stderr):
        stream.flush()
    return 0
