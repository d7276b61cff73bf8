"""No value from outside ever reaches a subprocess as an option (docs/security.md, class 1).

Two rules, checked on the package's source, hold it for every call, present and future:

* only :func:`gitrepo.git_process` starts git, and only ``hooks.run_chained_hook``
  starts anything else (the user's own hook, with git's arguments);
* every argument written into a git command line begins with a character
  written in our source (a string literal, or an f-string that starts with
  one). A URL, a remote name, a ref, a path or a message goes in ``revisions=``
  (after ``--end-of-options``) or ``operands=`` (after ``--``), or is fused
  into an option (``--message=<text>``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from git_theta_filter.gitrepo import (
    GitRepo,
    OptionLikeArgumentError,
    git_process,
    refuse_option_like,
    run_git,
)

PACKAGE = Path(__file__).resolve().parents[2] / "git_theta_filter"
# (module, function) pairs that may start a process.
PROCESS_STARTERS = {
    ("gitrepo.py", "git_process"),
    ("gitrepo.py", "git_stream"),  # long-running git fed on stdin (cat-file --batch)
    ("hooks.py", "run_chained_hook"),
    ("hooks.py", "run_hook_script"),  # sh with our packaged post-* script and git's arguments
    # ssh for git-lfs-authenticate: its argv comes from ssh_command_line, which
    # refuses a host that starts with "-" and puts "--" before it (issue 15).
    ("store/lfs_ssh.py", "_run"),
    # The filter's client starts a filter server: this interpreter and the client's own file.
    ("filter_client.py", "_start_server"),
    # A filter server forks one child per client, which serves git (filter_server.py).
    ("filter_server.py", "_fork_child"),
}
PROCESS_MODULES = {"subprocess", "pty", "asyncio"}
OS_PROCESS_CALLS = ("system", "popen", "exec", "spawn", "posix_spawn", "fork")
# Calls whose positional arguments are a git command line.
GIT_LIST_CALLS = {"git_process", "run_git", "git_stream"}  # first argument: the list of arguments
GIT_VARARG_CALLS = {"git", "_git"}  # GitRepo.git(*args), RemoteHelper._git(*args)
# Names that may stand in a command line: wrappers handing their own ``args`` on
# (their callers are checked instead), and a name the function checks against ours.
TRUSTED_NAMES = {
    ("gitrepo.py", "run_git"): "args",
    ("gitrepo.py", "git"): "args",
    ("remote_helper.py", "_git"): "args",
    ("lfs_interop.py", "run_lfs_hook"): "name",  # one of LFS_HOOK_NAMES
}


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(), str(path))


def _functions_by_call(tree: ast.Module) -> Iterator[tuple[str, ast.Call]]:
    """Every call with the name of the innermost function around it ("" at module level)."""

    def walk(node: ast.AST, function: str) -> Iterator[tuple[str, ast.Call]]:
        for child in ast.iter_child_nodes(node):
            name = (
                child.name
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                else function
            )
            if isinstance(child, ast.Call):
                yield function, child
            yield from walk(child, name)

    yield from walk(tree, "")


def _starts_a_process(call: ast.Call, imported: dict[str, str]) -> bool:
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        module = imported.get(func.value.id, func.value.id)
        if module in PROCESS_MODULES:
            return True
        return module == "os" and func.attr.startswith(OS_PROCESS_CALLS)
    if isinstance(func, ast.Name):
        origin = imported.get(func.id, "")
        return origin.partition(".")[0] in PROCESS_MODULES or (
            origin.startswith("os.") and origin[3:].startswith(OS_PROCESS_CALLS)
        )
    return False


def _imports(tree: ast.Module) -> dict[str, str]:
    """Local name -> what it was imported as (``run`` -> ``subprocess.run``)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _begins_with_our_character(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value != ""
    if isinstance(node, ast.JoinedStr):
        first = node.values[0] if node.values else None
        return isinstance(first, ast.Constant) and first.value != ""
    if isinstance(node, ast.IfExp):
        return _begins_with_our_character(node.body) and _begins_with_our_character(node.orelse)
    return False


def _command_line(call: ast.Call) -> list[ast.expr] | None:
    """The argument expressions of the git command line ``call`` builds; None if it builds none."""
    func = call.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    if name in GIT_LIST_CALLS:
        first = call.args[0] if call.args else None
        return list(first.elts) if isinstance(first, (ast.List, ast.Tuple)) else [first or call]
    if name in GIT_VARARG_CALLS and isinstance(func, ast.Attribute):
        return list(call.args)
    return None


def test_only_the_git_runner_and_the_chained_hook_start_processes() -> None:
    starters = []
    for module, tree in _modules():
        imported = _imports(tree)
        for function, call in _functions_by_call(tree):
            if _starts_a_process(call, imported):
                starters.append((module, function, call.lineno))
    assert starters, "the scan found no process at all: the check itself is broken"
    outside = [entry for entry in starters if entry[:2] not in PROCESS_STARTERS]
    assert outside == [], f"processes started outside gitrepo.git_process: {outside}"


def test_every_git_argument_begins_with_a_character_of_our_own() -> None:
    checked = 0
    offenders = []
    for module, tree in _modules():
        for function, call in _functions_by_call(tree):
            arguments = _command_line(call)
            if arguments is None:
                continue
            checked += 1
            for argument in arguments:
                trusted = TRUSTED_NAMES.get((module, function))
                if isinstance(argument, ast.Name) and argument.id == trusted:
                    continue
                if not _begins_with_our_character(argument):
                    offenders.append(f"{module}:{call.lineno}: {ast.unparse(argument)}")
    assert checked > 20, f"only {checked} git calls found: the check itself is broken"
    assert offenders == [], "pass values through revisions=/operands=: " + "; ".join(offenders)


@pytest.mark.parametrize(
    "source, accepted",
    [
        ('run_git(["config", "--get"], operands=[key])', True),
        ('repo.git("rev-parse", f"--path={x}", "-c" if a else "-d")', True),
        ('repo.git("fetch", url)', False),
        ('repo.git("rev-list", *shas)', False),
        ('run_git(["log", f"{rev}^"])', False),
        ("run_git(args)", False),
        ('repo.git("x", "-c" if a else value)', False),
    ],
)
def test_the_argument_check_tells_our_characters_from_data(source: str, accepted: bool) -> None:
    call = ast.parse(source).body[0].value  # type: ignore[attr-defined]
    arguments = _command_line(call)
    assert arguments is not None
    assert all(_begins_with_our_character(a) for a in arguments) is accepted


def test_the_process_check_sees_every_spelling_of_a_process_start() -> None:
    tree = ast.parse(
        "import subprocess as sp\nfrom subprocess import run\nimport os\n"
        "def f():\n    sp.run(['x'])\n    run(['y'])\n    os.system('z')\n    os.execvp('a', [])\n"
    )
    imported = _imports(tree)
    assert sum(_starts_a_process(call, imported) for _, call in _functions_by_call(tree)) == 4


def test_git_process_puts_operands_after_double_dash_and_revisions_after_end_of_options(
    repo: Path,
) -> None:
    config = repo / "scratch.cfg"
    run_git(["config", f"--file={config}", "--add"], operands=["theta.x", "-v"], cwd=repo)
    assert run_git(["config", f"--file={config}", "--get"], operands=["theta.x"], cwd=repo) == (
        "-v\n"
    )
    result = git_process(["rev-parse", "--verify", "--quiet"], revisions=["--git-dir"], cwd=repo)
    assert result.returncode != 0 and result.stdout == b""  # a revision named "--git-dir": none
    assert GitRepo.discover(repo).git("rev-parse", "--verify", revisions=["HEAD"]).strip()


@pytest.mark.parametrize("value", ["-x", "--upload-pack=touch pwned", "-oProxyCommand=x"])
def test_refuse_option_like_refuses_a_leading_dash(value: str) -> None:
    with pytest.raises(OptionLikeArgumentError, match="begins with '-'"):
        refuse_option_like(value, "URL")
    assert refuse_option_like("origin", "remote name") == "origin"
