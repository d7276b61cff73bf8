"""Shared fixtures: every test gets its own HOME, no system config, and real git."""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests check results, not speed: on a CI machine shared with other work,
# hypothesis's default 200 ms deadline per example failed test_text_list_round_trip
# at random. Every property test runs without one; tests/fuzz sets its own limits.
settings.register_profile("no-deadline", deadline=None)
settings.load_profile("no-deadline")

# Some environments (this project's CI among them) set PYTHONDONTWRITEBYTECODE.
# Without cached bytecode, each of the thousands of git-theta and filter processes
# the tests start compiles the package again, and pytest rewrites every test
# module's asserts again: minutes of the suite's time. Tests write bytecode as
# Python does by default.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

# Each test process (an xdist worker), and every command it starts, may map at most
# this much memory. Once, in CI, a worker grew to 23 GB: the kernel killed it and
# the run hung, with no word of which test it was. Under this cap the allocation
# that goes too far raises MemoryError, and the test that made it fails with a
# traceback. The whole suite passes under it with room to spare (its largest
# worker maps under 3 GB, torch's reservations included). A lower limit set from
# outside (``ulimit -v``) is kept.
TEST_ADDRESS_SPACE = 12 << 30


def _cap_address_space(limit: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft > limit:
        capped = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (capped, hard))


_cap_address_space(TEST_ADDRESS_SPACE)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class GitEnv:
    """An isolated environment: its own HOME, GIT_CONFIG_NOSYSTEM=1, our scripts on PATH."""

    home: Path
    env: dict[str, str]

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        input: bytes | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a command; ``timeout`` turns a hang (a FIFO read, a runaway parse) into a failure."""
        result = subprocess.run(
            list(args),
            cwd=cwd,
            input=input,
            capture_output=True,
            env={**self.env, **(env or {})},
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"command failed ({result.returncode}): {' '.join(args)}\n"
                f"stdout:\n{result.stdout.decode(errors='replace')}\nstderr:\n{result.stderr.decode(errors='replace')}"
            )
        return result

    def git(self, repo: Path, *args: str, **kwargs) -> str:
        return self.run("git", *args, cwd=repo, **kwargs).stdout.decode()

    def theta(self, repo: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run("git", "theta", *args, cwd=repo, **kwargs)


def isolated_git_env(home: Path) -> GitEnv:
    """A new HOME with git configured and `git theta install --global` done; no system config."""
    home.mkdir(parents=True)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        k: v
        for k, v in os.environ.items()
        # The terminal running the tests (pytest-xdist's workers set COLUMNS) must not
        # change what the commands under test print.
        if not k.startswith("GIT_") and k not in ("HOME", "XDG_CONFIG_HOME", "COLUMNS", "LINES")
    }
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        GIT_CONFIG_NOSYSTEM="1",
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        GIT_AUTHOR_DATE="2026-01-01T00:00:00Z",
        GIT_COMMITTER_DATE="2026-01-01T00:00:00Z",
    )
    genv = GitEnv(home, env)
    genv.run("git", "config", "--global", "user.name", "Theta Test")
    genv.run("git", "config", "--global", "user.email", "theta@example.invalid")
    genv.run("git", "config", "--global", "init.defaultBranch", "main")
    # Run outside any repository, so no hooks land in the checkout running the tests.
    genv.run("git-theta", "install", "--global", cwd=home)
    return genv


@pytest.fixture
def git_env(tmp_path: Path) -> GitEnv:
    return isolated_git_env(tmp_path / "home")


@pytest.fixture
def repo(git_env: GitEnv, tmp_path: Path) -> Path:
    """A fresh repository with '*.pth' and '*.safetensors' tracked."""
    path = tmp_path / "repo"
    git_env.run("git", "init", "-q", str(path))
    git_env.theta(path, "track", "*.pth", "*.pt", "*.safetensors", "*.bin")
    git_env.git(path, "add", ".gitattributes")
    git_env.git(path, "commit", "-qm", "track models")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_digit_limit():
    """Python's limit on integer digits off (PYTHONINTMAXSTRDIGITS=0), as a user may set it."""
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    yield
    sys.set_int_max_str_digits(before)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real HTTP S3 endpoint (moto's server) on 127.0.0.1, shared by the whole run."""
    from moto.server import ThreadedMotoServer  # slow to import: only S3 tests pay for it

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
