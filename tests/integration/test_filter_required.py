"""Never stage a raw model by accident: commands that write work-tree files refuse when the
theta filter is not configured, and `git theta pull` works with every object local and no
remote store."""

from __future__ import annotations

from pathlib import Path

from helpers import assert_status_clean, commit_all, mlp_checkpoint, save, sha256_file

MANIFEST_MAGIC = b"git-theta-manifest "


def test_pull_and_show_refuse_to_write_a_tracked_model_when_the_filter_is_not_configured(
    git_env, repo: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared.git"
    git_env.run("git", "init", "-q", "--bare", str(shared))
    git_env.git(repo, "remote", "add", "origin", str(shared))
    digest = save(mlp_checkpoint(0), repo / "model.pth")
    commit_all(git_env, repo, "model.pth")
    git_env.git(repo, "push", "-q", "-u", "origin", "main")
    # The package is installed, but this machine never ran `git theta install`.
    git_env.run("git", "config", "--global", "--remove-section", "filter.theta")
    clone = tmp_path / "clone"
    git_env.run("git", "clone", "-q", str(shared), str(clone))
    assert (clone / "model.pth").read_bytes().startswith(MANIFEST_MAGIC)

    result = git_env.theta(clone, "pull", check=False)
    assert result.returncode == 1
    assert (
        "the theta filter is not configured (filter.theta.process); run `git theta install`"
        in result.stderr.decode()
    )
    assert (clone / "model.pth").read_bytes().startswith(MANIFEST_MAGIC)
    assert_status_clean(git_env, clone)

    # `git theta show -o` onto a tracked model path would stage it raw just the same;
    # elsewhere (outside the work tree, or an untracked kind of file) it writes.
    shown = git_env.theta(clone, "show", "HEAD:model.pth", "-o", "model.pth", check=False)
    assert shown.returncode == 1
    assert "filter is not configured" in shown.stderr.decode()
    assert (clone / "model.pth").read_bytes().startswith(MANIFEST_MAGIC)
    git_env.theta(clone, "show", "HEAD:model.pth", "-o", str(tmp_path / "model.pth"))
    git_env.theta(clone, "show", "HEAD:model.pth", "-o", "copy.dat")
    assert sha256_file(clone / "copy.dat") == digest == sha256_file(tmp_path / "model.pth")


def test_pull_after_skip_smudge_needs_no_remote_store_when_every_object_is_local(
    git_env, repo: Path
) -> None:
    digest = save(mlp_checkpoint(0), repo / "model.pth")
    commit_all(git_env, repo, "model.pth")
    (repo / "model.pth").unlink()
    git_env.git(repo, "checkout", "--", "model.pth", env={"GIT_THETA_SKIP_SMUDGE": "1"})
    assert (repo / "model.pth").read_bytes().startswith(MANIFEST_MAGIC)
    # The one remote has no store (another helper's transport): everything is here anyway.
    git_env.git(repo, "remote", "add", "origin", "other::somewhere")
    git_env.theta(repo, "pull")
    assert sha256_file(repo / "model.pth") == digest
    assert_status_clean(git_env, repo)
