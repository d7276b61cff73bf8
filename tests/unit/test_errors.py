"""The one place errors become messages and exit codes (cli/_errors.py)."""

from __future__ import annotations

import sys

import pytest

from git_theta_filter.cli._errors import format_error, run_reporting
from git_theta_filter.errors import ThetaError
from git_theta_filter.gitrepo import GitError


def raising(exc: BaseException):
    def command() -> int:
        raise exc

    return command


def test_run_reporting_returns_the_commands_own_exit_code(capsys) -> None:
    assert run_reporting(lambda: 3) == 3
    assert capsys.readouterr().err == ""


def test_run_reporting_turns_an_error_into_one_line_and_its_exit_code(capsys) -> None:
    assert run_reporting(raising(ThetaError("model.pth: broken", hint="run `x`"))) == 1
    assert capsys.readouterr().err == "git-theta: error: model.pth: broken; run `x`\n"
    assert run_reporting(raising(GitError(["fetch"], "fatal: no\n"))) == 128
    assert capsys.readouterr().err == "git-theta: error: `git fetch`: fatal: no\n"


def test_run_reporting_names_an_unexpected_exception_without_a_traceback(capsys) -> None:
    assert run_reporting(raising(ValueError("bad value"))) == 1
    assert capsys.readouterr().err == "git-theta: error: ValueError: bad value\n"


def test_run_reporting_escapes_what_the_command_prints(capsys) -> None:
    def command() -> int:
        print("weights\x1b]0;owned\x07.pth")
        print("a\u202eb", file=sys.stderr)
        return 0

    assert run_reporting(command) == 0
    captured = capsys.readouterr()
    assert captured.out == "weights\\x1b]0;owned\\x07.pth\n"
    assert captured.err == "a\\u202eb\n"


@pytest.mark.parametrize(("exc", "code"), [(KeyboardInterrupt(), 130), (BrokenPipeError(), 141)])
def test_run_reporting_exits_as_a_shell_reports_an_interrupt_or_a_closed_pipe(
    exc: BaseException, code: int, capsys
) -> None:
    assert run_reporting(raising(exc)) == code
    assert capsys.readouterr().err == ""


def test_format_error_adds_the_path_once() -> None:
    assert format_error(ThetaError("bad"), "a.pth") == "git-theta: error: a.pth: bad"
    assert format_error(ThetaError("a.pth: bad"), "a.pth") == "git-theta: error: a.pth: bad"
