"""Hooks: installed by track and by the filter, chained with the user's, and a pre-push
that refuses to publish commits whose tensor objects are missing."""

from __future__ import annotations

import shutil
import stat
from importlib import resources
from pathlib import Path

import pytest
from helpers import (
    commit_all,
    mlp_checkpoint,
    object_path,
    read_manifest,
    save,
    sha256_file,
    store_oids,
)

from git_theta_filter.hooks import run_hook_script

OUR_HOOK = (resources.files("git_theta_filter") / "hook_scripts" / "pre-push").read_text()

USER_HOOK = """#!/bin/sh
# the user's own pre-push hook: records what git gave it
echo "$@" > "$(git rev-parse --git-dir)/user-hook-args"
cat > "$(git rev-parse --git-dir)/user-hook-stdin"
exit 0
"""


def assert_our_hook(hooks: Path) -> None:
    hook = hooks / "pre-push"
    assert hook.is_file(), f"no pre-push hook in {hooks}"
    assert hook.read_text() == OUR_HOOK
    assert hook.stat().st_mode & stat.S_IXUSR


def bare_remote(git_env, repo: Path, tmp_path: Path, name: str = "origin") -> Path:
    remote = tmp_path / f"{name}.git"
    git_env.run("git", "init", "-q", "--bare", str(remote))
    git_env.git(repo, "remote", "add", name, str(remote))
    return remote


def remote_ref(git_env, remote: Path, ref: str = "refs/heads/main") -> str | None:
    result = git_env.run("git", "rev-parse", "--verify", "-q", ref, cwd=remote, check=False)
    return result.stdout.decode().strip() or None


def test_hooks_track_installs_pre_push(git_env, repo: Path) -> None:
    assert_our_hook(repo / ".git" / "hooks")
    # Running track again changes nothing and keeps one hook.
    out = git_env.theta(repo, "track", "*.pth").stdout.decode()
    assert out.strip() == "'*.pth' is already tracked"
    assert_our_hook(repo / ".git" / "hooks")
    assert not (repo / ".git" / "hooks" / "pre-push.pre-theta").exists()


def test_hooks_user_hook_is_chained_and_uninstall_restores_it(git_env, tmp_path: Path) -> None:
    repo = tmp_path / "own"
    git_env.run("git", "init", "-q", str(repo))
    hooks = repo / ".git" / "hooks"
    (hooks / "pre-push").write_text(USER_HOOK)
    (hooks / "pre-push").chmod(0o755)

    out = git_env.theta(repo, "track", "*.pth").stdout.decode()
    assert "kept your pre-push hook as pre-push.pre-theta; it runs after ours" in out
    assert_our_hook(hooks)
    assert (hooks / "pre-push.pre-theta").read_text() == USER_HOOK

    save(mlp_checkpoint(0), repo / "model.pth")
    head = commit_all(git_env, repo, ".gitattributes", "model.pth")
    remote = bare_remote(git_env, repo, tmp_path)
    git_env.git(repo, "push", "-q", "origin", "main")
    assert remote_ref(git_env, remote) == head
    # The user's hook ran after ours, with git's arguments and the very same stdin.
    assert (repo / ".git" / "user-hook-args").read_text() == f"origin {remote}\n"
    assert (
        repo / ".git" / "user-hook-stdin"
    ).read_text() == f"refs/heads/main {head} refs/heads/main {'0' * 40}\n"

    # `git theta install --global` (run by the fixture) configured the required process filter.
    assert git_env.git(repo, "config", "--global", "filter.theta.required").strip() == "true"
    assert (
        git_env.git(repo, "config", "--global", "filter.theta.process")
        .strip()
        .endswith("filter_client.py")
    )
    out = git_env.theta(repo, "uninstall", "--global").stdout.decode()
    assert "restored your pre-push hook" in out
    assert (hooks / "pre-push").read_text() == USER_HOOK
    assert not (hooks / "pre-push.pre-theta").exists()
    config = git_env.run(
        "git", "config", "--global", "--get-regexp", "^filter\\.theta\\.", check=False
    )
    assert config.returncode == 1 and config.stdout == b""


def test_hooks_a_failing_user_hook_still_stops_the_push(
    git_env, repo: Path, tmp_path: Path
) -> None:
    hooks = repo / ".git" / "hooks"
    (hooks / "pre-push.pre-theta").write_text("#!/bin/sh\necho 'user hook says no' >&2\nexit 3\n")
    (hooks / "pre-push.pre-theta").chmod(0o755)
    save(mlp_checkpoint(0), repo / "model.pth")
    commit_all(git_env, repo, "model.pth")
    remote = bare_remote(git_env, repo, tmp_path)
    result = git_env.run("git", "push", "-q", "origin", "main", cwd=repo, check=False)
    assert result.returncode != 0
    assert "user hook says no" in result.stderr.decode()
    assert remote_ref(git_env, remote) is None


def test_hooks_fresh_clone_gets_the_hook_when_the_filter_runs(
    git_env, repo: Path, tmp_path: Path
) -> None:
    save(mlp_checkpoint(0), repo / "model.pth")
    commit_all(git_env, repo, "model.pth")
    digest = sha256_file(repo / "model.pth")
    remote = bare_remote(git_env, repo, tmp_path)
    git_env.git(repo, "push", "-q", "origin", "main")

    clone = tmp_path / "clone"
    git_env.run("git", "clone", "-q", "--no-checkout", str(remote), str(clone))
    assert not (clone / ".git" / "hooks" / "pre-push").exists()
    # Objects travel by other means (a later issue); copy the store, then check out.
    for part in ("objects", "packs"):
        if (repo / ".git" / "theta" / part).exists():
            shutil.copytree(repo / ".git" / "theta" / part, clone / ".git" / "theta" / part)
    result = git_env.run("git", "checkout", "-q", "main", cwd=clone)
    assert "git-theta: installed pre-push hook" in result.stderr.decode()
    assert_our_hook(clone / ".git" / "hooks")
    assert sha256_file(clone / "model.pth") == digest
    # The clone is fully set up: a new commit pushes with no extra step.
    save(mlp_checkpoint(1), clone / "model.pth")
    head = commit_all(git_env, clone, "model.pth")
    git_env.git(clone, "push", "-q", "origin", "main")
    assert remote_ref(git_env, remote) == head


def test_hooks_a_repository_gets_the_hook_at_its_first_add(git_env, tmp_path: Path) -> None:
    """`git theta install --global` then `git init`: no `track` ran here, so the filter
    installs the hook before its first clean (a clean the cache answers skips the check)."""
    repo = tmp_path / "plain"
    git_env.run("git", "init", "-q", str(repo))
    (repo / ".gitattributes").write_text("*.pth filter=theta diff=theta merge=theta -text\n")
    save(mlp_checkpoint(0), repo / "model.pth")
    result = git_env.run("git", "add", "model.pth", cwd=repo)
    assert "git-theta: installed pre-push hook" in result.stderr.decode()
    assert_our_hook(repo / ".git" / "hooks")


def test_hooks_pre_push_refuses_when_an_object_is_missing(
    git_env, repo: Path, tmp_path: Path
) -> None:
    remote = bare_remote(git_env, repo, tmp_path)
    save(mlp_checkpoint(0), repo / "model.pth")
    v1 = commit_all(git_env, repo, "model.pth", message="v1")
    # First push of the branch (the remote has nothing): the skeleton is missing.
    skeleton = object_path(repo, read_manifest(git_env, repo, "HEAD:model.pth").skeleton)
    kept = skeleton.read_bytes()
    skeleton.unlink()
    result = git_env.run("git", "push", "origin", "main", cwd=repo, check=False)
    assert result.returncode != 0
    assert "refusing to push: 1 tensor object(s)" in result.stderr.decode()
    assert remote_ref(git_env, remote) is None
    skeleton.write_bytes(kept)
    git_env.git(repo, "push", "-q", "origin", "main")
    assert remote_ref(git_env, remote) == v1

    before = store_oids(repo)
    save(mlp_checkpoint(1), repo / "model.pth")
    v2 = commit_all(git_env, repo, "model.pth", message="v2")
    v2_manifest = read_manifest(git_env, repo, "HEAD:model.pth")
    victim = sorted(store_oids(repo) - before)[0]
    assert victim in v2_manifest.object_ids()
    path = object_path(repo, victim)
    saved = path.read_bytes()
    path.unlink()

    result = git_env.run("git", "push", "origin", "main", cwd=repo, check=False)
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert f"git-theta: missing tensor object {victim}" in stderr
    assert (
        "git-theta: error: refusing to push: "
        "1 tensor object(s) behind these commits are not in the local store" in stderr
    )
    assert remote_ref(git_env, remote) == v1, "the refused push moved the remote ref"

    # Restored, the same push goes through.
    path.write_bytes(saved)
    path.chmod(0o444)
    git_env.git(repo, "push", "-q", "origin", "main")
    assert remote_ref(git_env, remote) == v2


def test_hooks_pre_push_ignores_objects_of_commits_the_remote_has(
    git_env, repo: Path, tmp_path: Path
) -> None:
    remote = bare_remote(git_env, repo, tmp_path)
    save(mlp_checkpoint(0), repo / "model.pth")
    commit_all(git_env, repo, "model.pth", message="v1")
    git_env.git(repo, "push", "-q", "origin", "main")
    v1_only = read_manifest(git_env, repo, "HEAD:model.pth").tensors[0].oid
    save(mlp_checkpoint(1), repo / "model.pth")
    v2 = commit_all(git_env, repo, "model.pth", message="v2")
    object_path(repo, v1_only).unlink()
    git_env.git(repo, "push", "-q", "origin", "main")
    assert remote_ref(git_env, remote) == v2


def test_hooks_tracked_hooks_path_is_never_rewritten_without_force(git_env, tmp_path: Path) -> None:
    repo = tmp_path / "team"
    git_env.run("git", "init", "-q", str(repo))
    shared = repo / ".githooks"
    shared.mkdir()
    (shared / "pre-push").write_text(USER_HOOK)
    (shared / "pre-push").chmod(0o755)
    git_env.git(repo, "config", "core.hooksPath", ".githooks")
    commit_all(git_env, repo, ".githooks/pre-push", message="team hooks")

    for command in (("track", "*.pth"), ("install", "--local")):
        out = git_env.theta(repo, *command).stdout.decode()
        assert (
            ".githooks/pre-push: left alone, as git tracks .githooks (core.hooksPath); "
            'add the line `git-theta hook pre-push "$@" || exit $?` to it' in out
        )
        assert (shared / "pre-push").read_text() == USER_HOOK
        assert sorted(p.name for p in shared.iterdir()) == ["pre-push"]
    # The filter, which installs hooks by itself, says the same and writes nothing.
    save(mlp_checkpoint(0), repo / "model.pth")
    added = git_env.run("git", "add", "model.pth", ".gitattributes", cwd=repo)
    assert "add the line `git-theta hook pre-push" in added.stderr.decode()
    assert (shared / "pre-push").read_text() == USER_HOOK

    # Once the team's hook calls ours, nothing more is said.
    (shared / "pre-push").write_text(
        USER_HOOK.replace("exit 0\n", 'git-theta hook pre-push "$@" || exit $?\n')
    )
    assert git_env.theta(repo, "install", "--local").stdout.decode().splitlines() == [
        "configured filter.theta and merge.theta (local)"
    ]

    (shared / "pre-push").write_text(USER_HOOK)
    out = git_env.theta(repo, "install", "--local", "--force").stdout.decode()
    assert "kept your pre-push hook as pre-push.pre-theta; it runs after ours" in out
    assert_our_hook(shared)


@pytest.mark.parametrize("name", ["pre-commit", "../cli/__init__.py"])
def test_hooks_run_only_our_packaged_scripts_by_name(name: str) -> None:
    # The name picks a file among the package's resources: any other would run a file
    # of the package (or beside it) as a shell script.
    with pytest.raises(ValueError, match=f"not a hook of ours: {name!r}"):
        run_hook_script(name, [])
