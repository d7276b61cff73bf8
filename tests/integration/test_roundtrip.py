"""Round trips through real git: commits, branches, worktrees, missing objects."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import (
    assert_manifest,
    assert_status_clean,
    bump_mtime,
    commit_all,
    copy_repo,
    isolated_git_env,
    mlp_checkpoint,
    object_path,
    read_manifest,
    save,
    sha256_file,
    status_lines,
    store_oids,
    tracked_repo,
)


def nested_checkpoint(seed: int) -> dict:
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    torch.manual_seed(seed)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(2, 8)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": seed}


def build_history(git_env, repo: Path) -> dict[str, dict[str, str]]:
    """main: v1 -> v2 -> v3; feature (from v1): v4 with other shapes.
    Returns {commit: {path: sha256}}.
    """
    history: dict[str, dict[str, str]] = {}

    def commit(message: str, model_seed: int, sizes: tuple[int, ...], opt_seed: int) -> None:
        files = {
            "model.pth": save(mlp_checkpoint(model_seed, sizes), repo / "model.pth"),
            "ckpt/opt.pth": save(nested_checkpoint(opt_seed), repo / "ckpt" / "opt.pth"),
        }
        history[commit_all(git_env, repo, "model.pth", "ckpt/opt.pth", message=message)] = files

    commit("v1", 0, (16, 32, 8), 0)
    git_env.git(repo, "branch", "feature")
    commit("v2", 1, (16, 32, 8), 0)
    commit("v3", 2, (16, 32, 8), 1)
    git_env.git(repo, "switch", "-q", "feature")
    commit("v4", 3, (16, 64, 8), 2)
    git_env.git(repo, "switch", "-q", "main")
    return history


def assert_files(repo: Path, expected: dict[str, str], where: str) -> None:
    got = {path: sha256_file(repo / path) for path in expected}
    assert got == expected, f"{where}: work tree differs from what was committed"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """One history per module; each test works on its own copy of it."""
    root = tmp_path_factory.mktemp("roundtrip")
    git_env = isolated_git_env(root)
    repo = tracked_repo(git_env, root / "template")
    return git_env, repo, build_history(git_env, repo)


@pytest.fixture
def repo_copy(template: tuple, tmp_path: Path) -> tuple:
    git_env, template_repo, history = template
    return git_env, copy_repo(template_repo, tmp_path / "repo"), history


def test_roundtrip_every_commit_and_branch_checks_out_byte_exact(repo_copy: tuple) -> None:
    git_env, repo, history = repo_copy
    commits = list(history)
    assert len(commits) == 4 and len(set(commits)) == 4
    # Nothing was lost on the way in: each version's manifest names its file's size and sha256.
    for commit, files in history.items():
        for path, digest in files.items():
            assert read_manifest(git_env, repo, f"{commit}:{path}").sha256 == digest
    # (git status after each step is test_status_clean's business.)
    for commit in reversed(commits):
        git_env.git(repo, "checkout", "-q", commit)
        assert_files(repo, history[commit], f"checkout {commit[:8]}")
    for branch, commit in (("feature", commits[3]), ("main", commits[2])):
        git_env.git(repo, "switch", "-q", branch)
        assert_files(repo, history[commit], f"switch {branch}")
    assert_status_clean(git_env, repo)


def test_roundtrip_user_flow_restores_an_old_version_and_re_adds_the_same_blob(
    repo_copy: tuple,
) -> None:
    """The issue's flow: `git checkout HEAD~1 -- model.pth`, then clean(smudge(m)) == m."""
    git_env, repo, history = repo_copy
    v1, v2, v3 = list(history)[:3]
    git_env.git(repo, "checkout", "HEAD~1", "--", "model.pth")
    assert sha256_file(repo / "model.pth") == history[v2]["model.pth"]
    staged = git_env.git(repo, "rev-parse", ":model.pth").strip()
    assert staged == git_env.git(repo, "rev-parse", "HEAD~1:model.pth").strip()
    # Re-adding the checked-out file through the filter gives the very same blob.
    git_env.git(repo, "rm", "-q", "--cached", "model.pth")
    git_env.git(repo, "add", "model.pth")
    assert git_env.git(repo, "rev-parse", ":model.pth").strip() == staged
    assert status_lines(git_env, repo) == ["M  model.pth"]
    git_env.git(repo, "reset", "-q", "--hard")
    assert sha256_file(repo / "model.pth") == history[v3]["model.pth"]
    # --renormalize re-cleans every tracked file: no blob may change.
    git_env.git(repo, "add", "--renormalize", ".")
    assert_status_clean(git_env, repo)
    git_env.git(repo, "checkout", "-q", v1)
    git_env.git(repo, "add", "--renormalize", ".")
    assert_status_clean(git_env, repo)


def test_roundtrip_diff_shows_which_tensors_changed(repo_copy: tuple) -> None:
    git_env, repo, history = repo_copy
    v1, v2 = list(history)[:2]
    diff = git_env.git(repo, "diff", "--no-ext-diff", "--no-textconv", v1, v2, "--", "ckpt/opt.pth")
    assert diff == "", "ckpt/opt.pth did not change between v1 and v2"
    diff = git_env.git(repo, "diff", "--no-ext-diff", "--no-textconv", v1, v2, "--", "model.pth")
    changed = {
        line.split()[1] for line in diff.splitlines() if line.startswith(("-tensor ", "+tensor "))
    }
    assert changed == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert "-sha256 " in diff and "+sha256 " in diff


def test_roundtrip_worktrees_share_the_common_store(repo_copy: tuple, tmp_path: Path) -> None:
    git_env, repo, history = repo_copy
    before = store_oids(repo)
    worktree = tmp_path / "wt"
    git_env.git(repo, "worktree", "add", "-q", str(worktree), "feature")
    assert_files(worktree, history[list(history)[3]], "worktree")
    assert_status_clean(git_env, worktree)
    # A commit made in the worktree lands in the main repository's store.
    save(mlp_checkpoint(9), worktree / "model.pth")
    commit_all(git_env, worktree, "model.pth", message="from the worktree")
    manifest = read_manifest(git_env, repo, "feature:model.pth")
    assert manifest.object_ids() <= store_oids(repo)
    assert store_oids(repo) - before
    assert not (repo / ".git" / "worktrees" / "wt" / "theta").exists()


def test_roundtrip_missing_object_fails_checkout_with_one_clear_line(repo_copy: tuple) -> None:
    git_env, repo, history = repo_copy
    v1 = list(history)[0]
    manifest = read_manifest(git_env, repo, f"{v1}:model.pth")
    by_name = {t.name: t.oid for t in manifest.tensors}
    victim = by_name["0.weight"]
    # Only v1 uses this object (every later version has new weights).
    assert all(
        victim not in read_manifest(git_env, repo, f"{c}:model.pth").object_ids()
        for c in list(history)[1:]
    )
    object_path(repo, victim).unlink()

    result = git_env.run("git", "checkout", "-q", v1, cwd=repo, check=False)
    assert result.returncode != 0
    errors = [
        line for line in result.stderr.decode().splitlines() if line.startswith("git-theta: error:")
    ]
    assert errors == [
        f"git-theta: error: model.pth: tensor object {victim} is missing from the local store, "
        "and no remote has an object store; set `git config theta.remote.origin.url "
        "<path|s3://bucket/prefix>` to a store that has it (docs/remotes.md), or set "
        "GIT_THETA_SKIP_SMUDGE=1 to check out the manifest instead"
    ]
    # The other file of that commit still came out right.
    assert sha256_file(repo / "ckpt" / "opt.pth") == history[v1]["ckpt/opt.pth"]


def test_roundtrip_skip_smudge_checks_out_manifests_and_status_stays_clean(
    repo_copy: tuple,
) -> None:
    git_env, repo, history = repo_copy
    v1, v2 = list(history)[:2]
    for path in ("model.pth", "ckpt/opt.pth"):
        (repo / path).unlink()
    git_env.run("git", "checkout", "-q", v1, cwd=repo, env={"GIT_THETA_SKIP_SMUDGE": "1"})
    for path in ("model.pth", "ckpt/opt.pth"):
        blob = git_env.run("git", "cat-file", "blob", f"{v1}:{path}", cwd=repo).stdout
        assert (repo / path).read_bytes() == blob
        assert_manifest(blob, format="torch-zip")
    assert_status_clean(git_env, repo)
    # Even once git re-reads the files (new mtime), a manifest cleans to itself.
    for path in ("model.pth", "ckpt/opt.pth"):
        bump_mtime(repo / path)
    assert_status_clean(git_env, repo)
    # Without the variable, a checkout rebuilds the files it changes; a file it
    # leaves alone (opt.pth is the same in v1 and v2) is rebuilt by checking it out again.
    git_env.git(repo, "checkout", "-q", v2)
    assert sha256_file(repo / "model.pth") == history[v2]["model.pth"]
    assert (repo / "ckpt" / "opt.pth").read_bytes().startswith(b"git-theta-manifest 1\n")
    (repo / "ckpt" / "opt.pth").unlink()
    git_env.git(repo, "checkout", "--", "ckpt/opt.pth")
    assert_files(repo, history[v2], "checkout -- ckpt/opt.pth")
    assert_status_clean(git_env, repo)
