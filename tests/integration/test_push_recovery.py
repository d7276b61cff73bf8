"""Recovery after a push that skipped the hook (`git push --no-verify`, a clobbered hook, a
machine without theta): `git theta push` checks what the store holds, not the tracking
refs; the missing-object error names a command that fixes it, or says no remote has it."""

from __future__ import annotations

from pathlib import Path

from helpers import commit_all, mlp_checkpoint, save, sha256_file, store_oids


def bare_store(path: Path) -> set[str]:
    return {p.name for p in (path / "theta" / "objects").glob("*/*/*")}


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
    assert f"uploaded {len(local)} tensor objects" in pushed.stderr.decode()

    again = git_env.theta(repo, "push").stderr.decode()
    assert (
        f"nothing to upload: {shared / 'theta' / 'objects'} already has all {len(local)}" in again
    )

    git_env.git(clone, "checkout", "-q", "-f", "main")
    assert sha256_file(clone / "model.pth") == digest
