"""Several remotes and forks: a missing object is looked for in every remote that has a store,
merges fetch what they need (or stop with a missing-object error, never a false conflict),
and a first push to a new remote from a lazy clone streams what it lacks from another store."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from helpers import mlp_checkpoint, save, sha256_file, store_oids

from git_theta_filter.gitrepo import GitRepo
from git_theta_filter.remotes import remotes_to_try

MODEL = "model.pth"


def version(*bumped: str) -> dict[str, torch.Tensor]:
    """The base MLP with each named tensor moved by +1."""
    state = mlp_checkpoint(0)
    for name in bumped:
        state[name] = state[name] + 1
    return state


def bare(git_env, path: Path) -> Path:
    git_env.run("git", "init", "-q", "--bare", str(path))
    return path


def commit(git_env, repo: Path, state: dict, message: str) -> str:
    digest = save(state, repo / MODEL)
    git_env.git(repo, "add", MODEL, ".gitattributes")
    git_env.git(repo, "commit", "-qm", message)
    return digest


def bare_store(path: Path) -> set[str]:
    return {p.name for p in (path / "theta" / "objects").glob("*/*/*")}


@pytest.fixture
def fork_setup(git_env, tmp_path: Path):
    """upstream (A pushes there) and fork (B's branch tracks it); both start at v0."""
    upstream = bare(git_env, tmp_path / "upstream.git")
    fork = bare(git_env, tmp_path / "fork.git")
    a = tmp_path / "A"
    git_env.run("git", "clone", "-q", str(upstream), str(a))
    git_env.theta(a, "track", "*.pth")
    commit(git_env, a, version(), "v0")
    git_env.git(a, "push", "-q", "origin", "main")
    b = tmp_path / "B"
    git_env.run("git", "clone", "-q", str(upstream), str(b))
    git_env.git(b, "remote", "add", "fork", str(fork))
    git_env.git(b, "push", "-q", "-u", "fork", "main")
    return a, b, upstream, fork


def test_forks_merge_of_upstream_fetches_from_upstream_while_tracking_the_fork(
    git_env, fork_setup
) -> None:
    a, b, upstream, fork = fork_setup
    commit(git_env, a, version("2.weight"), "upstream moves 2.weight")
    git_env.git(a, "push", "-q", "origin", "main")
    commit(git_env, b, version("0.weight"), "fork moves 0.weight")
    git_env.git(b, "fetch", "-q", "origin")

    merged = git_env.run("git", "merge", "-q", "--no-edit", "origin/main", cwd=b, check=False)
    assert merged.returncode == 0, merged.stderr.decode()
    state = torch.load(io.BytesIO((b / MODEL).read_bytes()), weights_only=True)
    want = version("0.weight", "2.weight")
    assert all(torch.equal(state[name], want[name]) for name in want)
    assert git_env.git(b, "status", "--porcelain", "--untracked-files=no") == ""


def test_forks_merge_whose_objects_no_remote_has_stops_with_a_missing_object_error(
    git_env, fork_setup
) -> None:
    a, b, upstream, fork = fork_setup
    commit(git_env, a, version("2.weight"), "upstream moves 2.weight")
    # The hook skipped: upstream's store never gets this version's objects.
    git_env.git(a, "push", "-q", "--no-verify", "origin", "main")
    commit(git_env, b, version("0.weight"), "fork moves 0.weight")
    git_env.git(b, "fetch", "-q", "origin")

    merged = git_env.run("git", "merge", "-q", "--no-edit", "origin/main", cwd=b, check=False)
    stderr = merged.stderr.decode()
    assert merged.returncode != 0
    assert "in conflict" not in stderr, "a missing object was reported as a tensor conflict"
    assert "is in no remote's store (tried 'origin', 'fork')" in stderr
    assert "run `git theta push` in a clone that has it" in stderr


def test_forks_checkout_of_an_upstream_commit_fetches_from_upstream(git_env, fork_setup) -> None:
    a, b, upstream, fork = fork_setup
    digest = commit(git_env, a, version("2.weight"), "upstream moves 2.weight")
    git_env.git(a, "push", "-q", "origin", "main")
    git_env.git(b, "fetch", "-q", "origin")
    git_env.git(b, "checkout", "-q", "origin/main")
    assert sha256_file(b / MODEL) == digest


def test_forks_fetch_of_a_named_remote_and_ref_uses_that_remote_s_store(
    git_env, fork_setup
) -> None:
    a, b, upstream, fork = fork_setup
    commit(git_env, a, version("2.weight"), "upstream moves 2.weight")
    git_env.git(a, "push", "-q", "origin", "main")
    git_env.git(b, "fetch", "-q", "origin")
    needed = bare_store(upstream) - store_oids(b)
    assert needed

    # The fork's store lacks them, and only the named remote's store is asked.
    wrong = git_env.theta(b, "fetch", "fork", "origin/main", check=False)
    assert wrong.returncode == 1
    assert f"in {fork / 'theta' / 'objects'}: is not there" in wrong.stderr.decode()
    assert store_oids(b) & needed == set()

    git_env.theta(b, "fetch", "origin", "origin/main")
    assert needed <= store_oids(b)
    bad = git_env.theta(b, "fetch", "origin", "no-such-ref", check=False)
    assert bad.returncode == 128 and "bad revision 'no-such-ref'" in bad.stderr.decode()


def test_forks_lookup_order_is_the_commit_s_remote_then_the_branch_s_then_the_rest(
    git_env, fork_setup
) -> None:
    a, b, upstream, fork = fork_setup
    commit(git_env, a, version("2.weight"), "upstream only")
    git_env.git(a, "push", "-q", "origin", "main")
    git_env.git(b, "fetch", "-q", "origin")
    upstream_only = git_env.git(b, "rev-parse", "origin/main").strip()
    local_only = git_env.git(b, "rev-parse", "HEAD").strip()
    git_env.git(b, "remote", "add", "nostore", "https://example.invalid/models.git")
    repo = GitRepo.discover(b)
    # 'nostore' is an https remote with no LFS server behind it: still a candidate,
    # as its store would be its LFS server (opening one does not contact it).
    assert [r for r, _ in remotes_to_try(repo, upstream_only)][:2] == ["origin", "fork"]
    assert [r for r, _ in remotes_to_try(repo, local_only)][:2] == ["fork", "origin"]
    unknown = [r for r, _ in remotes_to_try(repo, None)]
    assert unknown[0] == "fork" and sorted(unknown) == ["fork", "nostore", "origin"]


@pytest.mark.parametrize("how", ["git push", "git theta push --all"])
def test_forks_first_push_to_a_new_remote_from_a_lazy_clone_streams_old_objects(
    git_env, fork_setup, tmp_path: Path, how: str
) -> None:
    a, b, upstream, fork = fork_setup
    digests = [sha256_file(a / MODEL)]
    digests.append(commit(git_env, a, version("2.weight"), "v1"))
    git_env.git(a, "push", "-q", "origin", "main")
    # C checked out only v1: v0's objects are not local.
    c = tmp_path / "C"
    git_env.run("git", "clone", "-q", str(upstream), str(c))
    assert store_oids(c) != bare_store(upstream)
    mirror = bare(git_env, tmp_path / "mirror.git")
    git_env.git(c, "remote", "add", "mirror", str(mirror))
    if how == "git push":
        git_env.git(c, "push", "-q", "mirror", "main")
    else:
        git_env.git(c, "push", "-q", "--no-verify", "mirror", "main")
        said = git_env.theta(c, "push", "--all", "mirror").stderr.decode()
        copied = len(bare_store(upstream) - store_oids(c))
        assert (
            "tensor objects, " in said and f" ({copied} copied from other remotes' stores)" in said
        )
    assert bare_store(mirror) == bare_store(upstream)
    # Streamed across, not downloaded into C's own store first.
    assert store_oids(c) != bare_store(upstream)

    d = tmp_path / "D"
    git_env.run("git", "clone", "-q", str(mirror), str(d))
    git_env.git(d, "checkout", "-q", "HEAD~1")
    assert sha256_file(d / MODEL) == digests[0]


def test_forks_push_refuses_what_no_store_has_naming_where_it_looked(
    git_env, fork_setup, tmp_path: Path
) -> None:
    a, b, upstream, fork = fork_setup
    commit(git_env, a, version("2.weight"), "v1")
    git_env.git(a, "push", "-q", "origin", "main")
    c = tmp_path / "C"
    git_env.run("git", "clone", "-q", str(upstream), str(c))
    # One of v0's objects (which C never checked out) is gone from upstream's store.
    v0_only = sorted(bare_store(upstream) - store_oids(c))[0]
    lost = upstream / "theta" / "objects" / v0_only[:2] / v0_only[2:4] / v0_only
    lost.chmod(0o644)
    lost.unlink()
    mirror = bare(git_env, tmp_path / "mirror.git")
    git_env.git(c, "remote", "add", "mirror", str(mirror))
    pushed = git_env.run("git", "push", "mirror", "main", cwd=c, check=False)
    stderr = pushed.stderr.decode()
    assert pushed.returncode != 0
    assert (
        "refusing to push: 1 tensor object(s) behind these commits are not in the local store "
        "nor in the stores of 'origin'" in stderr
    )
    assert f"git-theta: missing tensor object {v0_only}" in stderr
    assert (
        git_env.run("git", "rev-parse", "-q", "--verify", "main", cwd=mirror, check=False).stdout
        == b""
    )
