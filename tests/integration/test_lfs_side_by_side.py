"""git-lfs in the same repository: whichever filter checks a file out first, and whichever
tool installs first, pushes and clones carry both kinds of file byte-exact, through a
plain remote and through ``theta::``. Real git-lfs 3.3, which moves objects to a path
or ``file://`` remote with no server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import assert_status_clean, commit_all, mlp_checkpoint, save, sha256_file

LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\n"


@pytest.fixture
def lfs_env(git_env):
    """The isolated environment with git-lfs's filter configured, as `git lfs install` does."""
    git_env.run("git", "lfs", "install", "--skip-repo", cwd=git_env.home)
    return git_env


def write_data(path: Path, seed: int) -> str:
    """A data file for LFS: bytes that depend only on ``seed``; returns their sha256."""
    path.write_bytes(bytes((seed * 7 + i * 13) % 251 for i in range(40_000)))
    return sha256_file(path)


def lfs_objects(bare: Path) -> set[str]:
    return {p.name for p in (bare / "lfs" / "objects").glob("*/*/*")}


def bare_repo(git_env, tmp_path: Path) -> Path:
    bare = tmp_path / "shared.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    return bare


def assert_both_byte_exact(clone: Path, files: dict[str, str]) -> None:
    for name, digest in files.items():
        data = (clone / name).read_bytes()
        assert not data.startswith(LFS_POINTER), f"{name} is still an LFS pointer"
        assert sha256_file(clone / name) == digest, f"{name} differs from what was committed"


# model first in index order: theta's filter runs (and installs hooks) before git-lfs's;
# data first: the other way round.
ORDERS = {"theta-first": ("a.pth", "b.bin"), "lfs-first": ("b.pth", "a.bin")}


@pytest.mark.parametrize("order", sorted(ORDERS))
@pytest.mark.parametrize("through_helper", [False, True], ids=["plain", "theta-url"])
def test_lfs_push_and_clone_carry_both_kinds_whatever_the_hook_order(
    lfs_env, tmp_path: Path, order: str, through_helper: bool
) -> None:
    git_env = lfs_env
    model, data = ORDERS[order]
    bare = bare_repo(git_env, tmp_path)
    url = f"theta::{bare}" if through_helper else str(bare)

    # The first clone sets up in the order of its file names, too: theta first
    # leaves git-lfs no hook slot; LFS first has its pre-push chained by ours.
    a = tmp_path / "A"
    git_env.run("git", "init", "-q", str(a))
    tools = [("theta", "track", "*.pth"), ("lfs", "track", "*.bin")]
    for tool in tools if order == "theta-first" else tools[::-1]:
        git_env.git(a, *tool)
    git_env.git(a, "remote", "add", "origin", url)
    files = {model: save(mlp_checkpoint(0), a / model), data: write_data(a / data, 0)}
    commit_all(git_env, a, ".gitattributes", model, data, message="v0")
    git_env.git(a, "push", "-q", "-u", "origin", "main")
    assert lfs_objects(bare) == {files[data]}, "the push did not send the LFS object"

    b = tmp_path / "B"
    git_env.run("git", "clone", "-q", url, str(b))
    assert_both_byte_exact(b, files)
    assert_status_clean(git_env, b)
    hooks = b / ".git" / "hooks"
    for name in ("pre-push", "post-checkout", "post-commit", "post-merge"):
        assert (hooks / name).is_file(), f"the clone has no {name} hook"

    # The clone, set up by whichever filter ran first, pushes both kinds too.
    files = {model: save(mlp_checkpoint(1), b / model), data: write_data(b / data, 1)}
    commit_all(git_env, b, model, data, message="v1")
    git_env.git(b, "push", "-q", "origin", "main")
    assert files[data] in lfs_objects(bare), "the clone's push did not send the LFS object"

    c = tmp_path / "C"
    git_env.run("git", "clone", "-q", url, str(c))
    assert_both_byte_exact(c, files)
    assert_status_clean(git_env, c)


def test_lfs_install_after_theta_still_pushes_lfs_objects(lfs_env, tmp_path: Path) -> None:
    git_env = lfs_env
    bare = bare_repo(git_env, tmp_path)
    a = tmp_path / "A"
    git_env.run("git", "init", "-q", str(a))
    git_env.theta(a, "track", "*.pth")
    # git-lfs finds our pre-push and installs none of its hooks (it says so, exit 2).
    refused = git_env.run("git", "lfs", "install", cwd=a, check=False)
    assert b"Hook already exists: pre-push" in refused.stderr
    git_env.git(a, "lfs", "track", "*.bin")
    git_env.git(a, "remote", "add", "origin", str(bare))
    files = {"m.pth": save(mlp_checkpoint(0), a / "m.pth"), "d.bin": write_data(a / "d.bin", 0)}
    commit_all(git_env, a, ".gitattributes", "m.pth", "d.bin")
    git_env.git(a, "push", "-q", "-u", "origin", "main")
    assert lfs_objects(bare) == {files["d.bin"]}

    b = tmp_path / "B"
    git_env.run("git", "clone", "-q", str(bare), str(b))
    assert_both_byte_exact(b, files)


def path_without_git_lfs(git_env, tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH has git and git-theta but not git-lfs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("git", "git-theta"):
        found = git_env.run("sh", "-c", f"command -v {tool}").stdout.decode().strip()
        (bin_dir / tool).symlink_to(found)
    return {"PATH": str(bin_dir), "GIT_EXEC_PATH": exec_path(git_env)}


def test_lfs_pre_push_without_git_lfs_on_path_refuses_the_push(
    lfs_env, repo: Path, tmp_path: Path
) -> None:
    git_env = lfs_env
    bare = bare_repo(git_env, tmp_path)
    git_env.git(repo, "remote", "add", "origin", str(bare))
    save(mlp_checkpoint(0), repo / "model.pth")
    commit_all(git_env, repo, "model.pth")
    env = path_without_git_lfs(git_env, tmp_path)
    result = git_env.run("git", "push", "origin", "main", cwd=repo, check=False, env=env)
    assert result.returncode != 0
    assert "this repository uses Git LFS, but 'git-lfs' is not on PATH" in result.stderr.decode()
    assert (
        git_env.run("git", "rev-parse", "-q", "--verify", "main", cwd=bare, check=False).stdout
        == b""
    )


def test_lfs_named_only_by_gitattributes_without_git_lfs_warns_and_fails_nothing(
    git_env, repo: Path, tmp_path: Path
) -> None:
    """A clone of an LFS repository on a machine without git-lfs (filter.lfs not configured):
    no hooks that would fail every checkout, and pushes go through with a warning."""
    env = path_without_git_lfs(git_env, tmp_path)
    with (repo / ".gitattributes").open("a") as attributes:
        attributes.write("*.dat filter=lfs diff=lfs merge=lfs -text\n")
    git_env.theta(repo, "install", "--local", env=env)
    hooks = repo / ".git" / "hooks"
    assert not (hooks / "post-checkout").exists()
    bare = bare_repo(git_env, tmp_path)
    git_env.git(repo, "remote", "add", "origin", str(bare))
    save(mlp_checkpoint(0), repo / "model.pth")
    commit_all(git_env, repo, ".gitattributes", "model.pth")
    pushed = git_env.run("git", "push", "-q", "origin", "main", cwd=repo, env=env)
    assert (
        "pre-push: this repository uses Git LFS, but 'git-lfs' is not on PATH; its hook "
        "work is skipped" in pushed.stderr.decode()
    )
    # With git-lfs at hand, its empty hook slots get ours.
    git_env.theta(repo, "install", "--local")
    assert (hooks / "post-checkout").is_file()


def exec_path(git_env) -> str:
    return git_env.run("git", "--exec-path").stdout.decode().strip()


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_lfs_pre_push_work_runs_once_whoever_installed_first(
    lfs_env, tmp_path: Path, order: str
) -> None:
    git_env = lfs_env
    # A git-lfs in front of the real one that logs each hook it is asked to run.
    real = git_env.run("sh", "-c", "command -v git-lfs").stdout.decode().strip()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "lfs-calls"
    (bin_dir / "git-lfs").write_text(f'#!/bin/sh\necho "$1" >> {log}\nexec {real} "$@"\n')
    (bin_dir / "git-lfs").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{git_env.env['PATH']}"}

    a = tmp_path / "A"
    git_env.run("git", "init", "-q", str(a))
    tools = [("theta", "track", "*.pth"), ("lfs", "track", "*.bin")]
    for tool in tools if order == "theta-first" else tools[::-1]:
        git_env.git(a, *tool)
    bare = bare_repo(git_env, tmp_path)
    git_env.git(a, "remote", "add", "origin", str(bare))
    save(mlp_checkpoint(0), a / "m.pth")
    write_data(a / "d.bin", 0)
    commit_all(git_env, a, ".gitattributes", "m.pth", "d.bin")
    log.unlink(missing_ok=True)
    git_env.git(a, "push", "-q", "origin", "main", env=env)
    assert log.read_text().split().count("pre-push") == 1


def logging_tools(git_env, tmp_path: Path) -> tuple[Path, Path, Path]:
    """Directories for PATH: one whose git-lfs logs each command before running the
    real one, and one whose git-theta only logs (a hook that starts us shows up)."""
    real_lfs = git_env.run("sh", "-c", "command -v git-lfs").stdout.decode().strip()
    log = tmp_path / "calls"
    lfs_dir, theta_dir = tmp_path / "lfs-bin", tmp_path / "theta-bin"
    for directory, tool, script in (
        (lfs_dir, "git-lfs", f'echo "git-lfs $1" >> {log}\nexec {real_lfs} "$@"'),
        (theta_dir, "git-theta", f'echo "git-theta $*" >> {log}\nexit 1'),
    ):
        directory.mkdir()
        (directory / tool).write_text(f"#!/bin/sh\n{script}\n")
        (directory / tool).chmod(0o755)
    return lfs_dir, theta_dir, log


def test_lfs_post_commit_hook_does_git_lfs_work_in_the_shell_without_starting_git_theta(
    lfs_env, tmp_path: Path
) -> None:
    """git runs post-commit after every commit: ours runs `git lfs post-commit` (once,
    whoever does it) and the hook it replaced, and starts no Python."""
    git_env = lfs_env
    a = tmp_path / "A"
    git_env.run("git", "init", "-q", str(a))
    git_env.git(a, "theta", "track", "*.pth")
    hooks = a / ".git" / "hooks"
    assert "git-theta-filter hook" in (hooks / "post-commit").read_text()
    lfs_dir, theta_dir, log = logging_tools(git_env, tmp_path)
    path = git_env.env["PATH"]
    env = {"PATH": os.pathsep.join([str(lfs_dir), str(theta_dir), path])}

    def commit(n: int) -> list[str]:
        log.unlink(missing_ok=True)
        (a / "notes.txt").write_text(f"{n}\n")  # no filter runs: only the hook can call us
        git_env.git(a, "add", "notes.txt")
        git_env.git(a, "commit", "-qm", f"notes {n}", env=env)
        return log.read_text().splitlines() if log.exists() else []

    assert commit(1) == ["git-lfs post-commit"]
    # A hook ours replaced runs after it; when it does git-lfs's work, that is left to it.
    chained = hooks / "post-commit.pre-theta"
    chained.write_text(f'#!/bin/sh\necho "chained $*" >> {log}\ngit lfs post-commit "$@"\n')
    chained.chmod(0o755)
    assert commit(2) == ["chained ", "git-lfs post-commit"]
    # `git-theta hook post-commit`, as a user's hook calls it, runs the same script.
    chained.unlink()
    log.unlink()
    git_env.theta(a, "hook", "post-commit", env={"PATH": f"{lfs_dir}{os.pathsep}{path}"})
    assert log.read_text().splitlines() == ["git-lfs post-commit"]
    # A repository that no longer uses Git LFS: nothing to do.
    git_env.run("git", "config", "--global", "--remove-section", "filter.lfs")
    assert commit(3) == []
