"""The man pages behind `git theta --help` are generated from the parsers and kept current."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from git_theta_filter.cli._manpage import pages, render_page

MAN_DIR = Path(__file__).resolve().parents[2] / "man" / "man1"


def test_committed_man_pages_match_the_parsers() -> None:
    generated = pages()
    assert sorted(generated) == sorted(p.name for p in MAN_DIR.glob("*.1"))
    for name, text in generated.items():
        assert (MAN_DIR / name).read_text() == text, (
            f"{name} is stale: run python -m git_theta_filter.cli._manpage man/man1"
        )


def test_the_main_page_lists_every_command() -> None:
    text = pages()["git-theta.1"]
    for command in (
        "install",
        "track",
        "ls-files",
        "du",
        "fsck",
        "gc",
        "push",
        "fetch",
        "pull",
        "log",
        "diff",
    ):
        assert f".SS {command}\n" in text


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
@pytest.mark.parametrize("name", sorted(pages()))
def test_man_pages_render_without_warnings(name: str) -> None:
    result = subprocess.run(
        ["man", "--warnings", "-l", str(MAN_DIR / name)],
        capture_output=True,
        text=True,
        env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
    )
    assert result.returncode == 0
    assert result.stderr == ""
    assert "OPTIONS" in result.stdout


def test_git_help_finds_the_installed_page(git_env, tmp_path: Path) -> None:
    installed = (
        Path(sysconfig.get_path("scripts")).parent / "share" / "man" / "man1" / "git-theta.1"
    )
    if shutil.which("man") is None or not installed.exists():
        pytest.skip("man pages are installed by ./install.sh")
    result = git_env.run(
        "git",
        "theta",
        "--help",
        cwd=tmp_path,
        env={"MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "80"},
    )
    assert b"version PyTorch model files in Git" in result.stdout


def test_a_tuple_metavar_names_each_value() -> None:
    # argparse lets an argument name each of its values; the page must show
    # those names, not the tuple's repr.
    parser = argparse.ArgumentParser(prog="git-theta-example")
    parser.add_argument("--range", nargs=2, metavar=("FROM", "TO"), help="two revisions")
    parser.add_argument("pair", nargs=2, metavar=("OLD", "NEW"), help="two files")
    lines = render_page("git-theta-example", "an example", parser).splitlines()
    assert "\\fB--range FROM TO\\fR" in lines
    assert "\\fBOLD NEW\\fR" in lines
