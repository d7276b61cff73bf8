"""Recovery after a push that skipped the hook (`git push --no-verify`, a clobbered hook, a
machine without theta): `git theta push` checks what the store holds, not the tracking
refs, and says what it did; the missing-object error names a command that fixes it, or
says no remote has it."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import commit_all, mlp_checkpoint, save, sha256_file, store_oids


def bare_store(path: Path) -> set[str]:
    return {p.name for p in (path / "theta" / "objects").glob("*/*/*")}


@pytest.fixture
def shared(git_env, repo: Path, tmp_path: Path) -> Path:
    """A bare remote 'origin' of ``repo``, with v0 of model.pth pushed through the hook."""
    shared = tmp_path / "shared.git"
    git_env.run("git", "init", "-q", "--bare", str(shared))
    git_env.git(repo, "remote", "add", "origin", str(shared))
    save(mlp_checkpoint(0), repo / "model.pth")
    commit_all(git_env, repo, "model.pth", message="v0")
    git_env.git(repo, "push", "-q", "-u", "origin", "main")
    return shared


def test_push_recovery_theta_push_uploads_what_a_no_verify_push_left_out(
    git_env, repo: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared.git"
    git_env.run("git", "init", "-q", "--bare", str(shared))
    git_env.git(repo, "remote", "add", "origin", str(shared))
    digest = save(mlp_checkpoint(0), repo / "model.pth")
    commit_all(git_env, repo, "model.pth")
    git_env.git(repo, "push", "-q", "--no-verify", "-u", "origin", "main")
    assert bare_store(shared) == set()

    # A collaborator's clone cannot check the model out, and is told why and what fixes it.
    clone = tmp_path / "clone"
    cloned = git_env.run("git", "clone", "-q", str(shared), str(clone), check=False)
    stderr = cloned.stderr.decode()
    assert "model.pth: tensor object" in stderr
    assert "is in no remote's store (tried 'origin')" in stderr
    assert "run `git theta push` in a clone that has it" in stderr

    # The tracking ref already has the commit; the store does not: push checks the store.
    pushed = git_env.theta(repo, "push")
    local = store_oids(repo)
    assert bare_store(shared) == local
    url = shared / "theta" / "objects"
    assert f"git-theta: {url}: uploaded {len(local)} tensor objects, " in pushed.stderr.decode()
    assert "; the store already had 0\n" in pushed.stderr.decode()
    assert pushed.stderr.decode().count("git-theta:") == 1, "one line sums up the push"

    again = git_env.theta(repo, "push").stderr.decode()
    assert again == f"git-theta: {url}: nothing to upload; the store already had all {len(local)}\n"

    git_env.git(clone, "checkout", "-q", "-f", "main")
    assert sha256_file(clone / "model.pth") == digest


def moved_last_layer() -> dict:
    state = mlp_checkpoint(0)
    state["2.weight"] = state["2.weight"] + 1
    return state


def git_only_path(git_env, tmp_path: Path) -> dict[str, str]:
    """PATH and exec path of a machine with git but without git-theta."""
    bin_dir = tmp_path / "no-theta-bin"
    bin_dir.mkdir()
    found = git_env.run("sh", "-c", "command -v git").stdout.decode().strip()
    (bin_dir / "git").symlink_to(found)
    exec_path = git_env.run("git", "--exec-path").stdout.decode().strip()
    return {"PATH": str(bin_dir), "GIT_EXEC_PATH": exec_path}


@pytest.mark.parametrize("how", ["clobbered hook", "machine without theta"])
def test_push_recovery_theta_push_after_a_push_that_skipped_theta(
    git_env, repo: Path, shared: Path, tmp_path: Path, how: str
) -> None:
    before = bare_store(shared)
    digest = save(moved_last_layer(), repo / "model.pth")
    commit_all(git_env, repo, "model.pth", message="v1")
    if how == "clobbered hook":
        # A team's own hook replaced ours and knows nothing of tensors.
        hook = repo / ".git" / "hooks" / "pre-push"
        hook.write_text("#!/bin/sh\nexit 0\n")
        git_env.git(repo, "push", "-q", "origin", "main")
    else:
        # The commit reaches the remote through a clone on a machine without git-theta,
        # then comes back to the tracking ref here.
        relay = tmp_path / "relay.git"
        git_env.run("git", "clone", "-q", "--bare", str(repo), str(relay))
        env = git_only_path(git_env, tmp_path)
        git_env.run("git", "push", "-q", str(shared), "main", cwd=relay, env=env)
        git_env.git(repo, "fetch", "-q", "origin")
    assert git_env.git(repo, "rev-parse", "origin/main") == git_env.git(repo, "rev-parse", "HEAD")
    lacking = store_oids(repo) - bare_store(shared)
    assert lacking, "the push should have left v1's new objects behind"

    pushed = git_env.theta(repo, "push").stderr.decode()
    assert bare_store(shared) == store_oids(repo)
    assert f"uploaded {len(lacking)} tensor objects, " in pushed
    assert f"; the store already had {len(before)}\n" in pushed

    clone = tmp_path / "clone"
    git_env.run("git", "clone", "-q", str(shared), str(clone))
    assert sha256_file(clone / "model.pth") == digest
    if how == "clobbered hook":
        # The documented repair of the hook keeps the team's as pre-push.pre-theta.
        git_env.theta(repo, "install", "--force", "--local")
        hooks = repo / ".git" / "hooks"
        assert (hooks / "pre-push.pre-theta").read_text() == "#!/bin/sh\nexit 0\n"
        assert "git-theta hook pre-push" in (hooks / "pre-push").read_text()
