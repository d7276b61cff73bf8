"""Finding the repository, running git, and git configuration.

The theta store lives in the *common* git dir, so every worktree of a
repository shares one store.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .errors import ThetaError
from .store.encoded import MAX_DEPTH
from .store.local import DEFAULT_MAX_DELTA_DEPTH, LocalStore, StoreSettings

if TYPE_CHECKING:
    from .lfs_pointer import LfsStorage  # loaded for a pointer only: not on the filter's start

__all__ = [
    "git_stream",
    "GitError",
    "OptionLikeArgumentError",
    "NotARepositoryError",
    "NoWorkTreeError",
    "GitRepo",
    "git_process",
    "run_git",
    "refuse_option_like",
    "filter_command",
    "is_git_object_id",
]

# A full git object id: sha1 (40 hex digits) or, in a sha256 repository, 64.
_GIT_OBJECT_ID = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


def is_git_object_id(text: str) -> bool:
    """Whether ``text`` is a full git object id, as git writes one (lowercase hex)."""
    return _GIT_OBJECT_ID.fullmatch(text) is not None


# When a clean or smudge filter fails, git's last line depends on when the filter
# process exited: it may be "fatal: the remote end hung up unexpectedly", which names
# nothing. These lines say what failed, best first: our filter's own error (the file,
# and the command that fixes it), then git's line naming the file whose filter failed,
# then git's line naming the filter command.
_OUR_ERROR = "git-theta: error: "
_FILTER_FAILED = (
    re.compile(r"(?:fatal|error): .+: (?:clean|smudge) filter '.*' failed"),
    re.compile(r"error: external filter '.*' failed.*"),
)


def _failure_line(stderr: str) -> str:
    """The line of a failed git command's stderr that its error quotes: the last one,
    unless a filter failed (see :data:`_FILTER_FAILED`)."""
    if not stderr.strip():
        return "failed"
    lines = [line.strip() for line in stderr.splitlines()]
    ours = [line for line in lines if line.startswith(_OUR_ERROR)]
    if ours:
        return ours[-1].removeprefix(_OUR_ERROR)
    for pattern in _FILTER_FAILED:
        named = [line for line in lines if pattern.fullmatch(line)]
        if named:
            return named[-1]
    return stderr.strip().splitlines()[-1]


class GitError(ThetaError):
    """A git command failed."""

    exit_code = 128

    def __init__(self, args: Sequence[str], stderr: str) -> None:
        super().__init__(f"`git {' '.join(args)}`: {_failure_line(stderr)}")
        self.stderr = stderr


class OptionLikeArgumentError(ThetaError):
    """A URL, remote name or ref that begins with ``-`` and would read as an option."""

    exit_code = 128

    def __init__(self, value: str, what: str) -> None:
        super().__init__(
            f"refusing {what} {value!r}: it begins with '-' and would be read as an option",
            hint=f"a {what} never begins with '-'; check where it came from",
        )
        self.value = value
        self.what = what


class NotARepositoryError(ThetaError):
    exit_code = 128

    def __init__(self, where: Path) -> None:
        super().__init__(f"not a git repository: {where}")


class NoWorkTreeError(ThetaError):
    """Something that reads or writes work-tree files, asked of a repository without one."""

    exit_code = 128

    def __init__(self, repo_path: Path, what: str = "this") -> None:
        super().__init__(
            f"{repo_path}: {what} needs a work tree, and there is none here",
            hint="run it inside a work tree; a bare repository has none, but a clone of it "
            f"does: `git clone {repo_path} <directory>`",
        )
        self.repo_path = repo_path


Output = Literal["capture", "show", "discard"]
_OUTPUT = {"capture": subprocess.PIPE, "show": None, "discard": subprocess.DEVNULL}


def git_process(
    args: Sequence[str],
    *,
    revisions: Sequence[str] = (),
    operands: Sequence[str] = (),
    cwd: Path | str | None = None,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    stdout: Output = "capture",
    stderr: Output = "capture",
) -> subprocess.CompletedProcess[bytes]:
    """Run git: the one place in the package that starts a git process.

    ``args`` are the subcommand and its options, each written in our own source
    so that it begins with a character we chose (``tests/unit/test_git_arguments.py``
    checks every call). Values that come from elsewhere (a URL, a remote name,
    a ref, a path, a commit message) go in ``revisions``, placed after
    ``--end-of-options``, or in ``operands``, placed after ``--``, or are fused
    into an option (``--message=<text>``). git then never reads them as
    options, whatever they start with (CVE-2017-1000117 was ``-oProxyCommand``
    read as an option by ssh).
    """
    argv = ["git", *args]
    if revisions:
        argv += ["--end-of-options", *revisions]
    if operands:
        argv += ["--", *operands]
    return subprocess.run(
        argv,
        cwd=cwd,
        input=input,
        stdout=_OUTPUT[stdout],
        stderr=_OUTPUT[stderr],
        env=None if env is None else dict(env),
    )


def git_stream(args: Sequence[str], *, cwd: Path | str | None = None) -> subprocess.Popen[bytes]:
    """Start a long-running git that reads requests on stdin and answers on stdout
    (``cat-file --batch``, ``check-attr --stdin``, ``hash-object --stdin-paths``).

    ``args`` follow :func:`git_process`'s rule; values from elsewhere (object
    ids, paths) go through stdin, never the command line. The caller closes
    stdin and waits for the process.
    """
    return subprocess.Popen(["git", *args], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def run_git(
    args: Sequence[str],
    cwd: Path | str | None = None,
    *,
    revisions: Sequence[str] = (),
    operands: Sequence[str] = (),
    input: bytes | None = None,
    check: bool = True,
) -> str:
    """Run git (through :func:`git_process`) and return its stdout as text."""
    result = git_process(args, revisions=revisions, operands=operands, cwd=cwd, input=input)
    if check and result.returncode != 0:
        raise GitError([*args, *revisions, *operands], result.stderr.decode("utf-8", "replace"))
    return result.stdout.decode("utf-8", "surrogateescape")


def refuse_option_like(value: str, what: str) -> str:
    """``value`` itself, unless it begins with ``-`` (an option to git, ssh or a shell).

    As git refuses such ssh hosts and paths since CVE-2017-1000117, a URL,
    remote name or ref we are handed must not look like an option even where
    ``--`` already keeps it from being read as one.
    """
    if value.startswith("-"):
        raise OptionLikeArgumentError(value, what)
    return value


_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True,
             "false": False, "no": False, "off": False, "0": False}  # fmt: skip


class BadStoreSettingError(ThetaError):
    """``theta.compression`` or ``theta.maxDeltaDepth`` has a value we cannot use."""

    exit_code = 128

    def __init__(self, compression: str, depth: str) -> None:
        super().__init__(
            f"theta.compression={compression!r} or theta.maxDeltaDepth={depth!r} is not valid",
            hint="set theta.compression to true or false and theta.maxDeltaDepth to "
            f"0-{MAX_DEPTH}, e.g. `git config theta.maxDeltaDepth 10`",
        )


@dataclass(frozen=True)
class GitRepo:
    git_dir: Path
    common_dir: Path
    worktree: Path | None

    @classmethod
    def discover(cls, cwd: str | os.PathLike[str] | None = None) -> GitRepo:
        # Absolute, so that an error names the directory whatever was passed (`gtf.open('.')`).
        where = Path(os.path.abspath(cwd if cwd is not None else os.getcwd()))
        # One git process (every filter start comes through here): rev-parse prints
        # each answer in turn, and only --show-toplevel fails outside a work tree
        # (a bare repository, or inside .git), after the first three are printed.
        result = git_process(
            [
                "rev-parse",
                "--path-format=absolute",
                "--git-dir",
                "--git-common-dir",
                "--is-bare-repository",
                "--show-toplevel",
            ],
            cwd=where,
        )
        lines = os.fsdecode(result.stdout).splitlines()
        if result.returncode == 0 and len(lines) == 4:
            worktree = Path(lines[3]) if lines[2] != "true" else None
        elif result.returncode != 0 and len(lines) == 3:
            worktree = None  # only --show-toplevel failed: there is no work tree here
        else:
            raise NotARepositoryError(where)
        return cls(Path(lines[0]), Path(lines[1]), worktree)

    @property
    def theta_dir(self) -> Path:
        return self.common_dir / "theta"

    def store(self) -> LocalStore:
        return LocalStore(self.theta_dir, self.store_settings)

    def store_settings(self) -> StoreSettings:
        """``theta.compression`` and ``theta.maxDeltaDepth`` from git config, in one call."""
        found = self.git(
            "config", "--get-regexp", r"^theta\.(compression|maxdeltadepth)$", check=False
        )
        values = dict(line.partition(" ")[::2] for line in found.splitlines())
        compression = values.get("theta.compression", "true").lower()
        depth = values.get("theta.maxdeltadepth", str(DEFAULT_MAX_DELTA_DEPTH))
        if compression not in _BOOLEANS or not depth.isdigit() or int(depth) > MAX_DEPTH:
            raise BadStoreSettingError(compression, depth)
        return StoreSettings(_BOOLEANS[compression], int(depth))

    def lfs_storage(self) -> LfsStorage:
        """git-lfs's local objects (``lfs.storage``, else ``<common dir>/lfs``)."""
        from .lfs_pointer import LfsStorage

        return LfsStorage.for_git_dirs(
            self.git_dir, self.common_dir, self.config_get("lfs.storage")
        )

    @property
    def cwd(self) -> Path:
        return self.worktree or self.git_dir

    def require_worktree(self, what: str = "this") -> Path:
        """The top of the work tree; without one, :class:`NoWorkTreeError` naming ``what``."""
        if self.worktree is None:
            raise NoWorkTreeError(self.git_dir, what)
        return self.worktree

    def git(
        self,
        *args: str,
        revisions: Sequence[str] = (),
        operands: Sequence[str] = (),
        input: bytes | None = None,
        check: bool = True,
    ) -> str:
        """git in this repository; see :func:`git_process` for ``revisions`` and ``operands``."""
        return run_git(
            args, cwd=self.cwd, revisions=revisions, operands=operands, input=input, check=check
        )

    def hooks_dir(self) -> Path:
        """Where git looks for hooks, honouring ``core.hooksPath``."""
        path = Path(self.git("rev-parse", "--path-format=absolute", "--git-path", "hooks").strip())
        return path

    def config_get(self, key: str) -> str | None:
        value = self.git("config", "--get", operands=[key], check=False).strip()
        return value or None


def filter_command() -> str:
    """How git should start us: by name when every ``git-theta`` on PATH is this script.

    Otherwise the script's absolute path, shell-quoted: git runs the
    configured command through the shell, so a path with a space must be
    quoted. A second ``git-theta`` on PATH is typically a version manager's
    shim (pyenv, asdf), which runs before this script in the user's shell but
    after it here (``pyenv exec`` puts the interpreter's directory first).
    Through the shim, every filter start would cost several extra bash
    processes (more than the filter's own start-up) and the interpreter would
    be chosen by the repository's ``.python-version`` file.
    """
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if script is None or script.name != "git-theta" or not script.exists():
        return "git-theta"  # run as a module (tests, python -m): by name, as installed
    on_path = _executables_on_path("git-theta")
    if on_path and all(path.resolve() == script for path in on_path):
        return "git-theta"
    return shlex.quote(str(script))


def _executables_on_path(name: str) -> list[Path]:
    """Every executable file called ``name`` in the directories of PATH, in order."""
    found = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory or ".") / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            found.append(candidate)
    return found
