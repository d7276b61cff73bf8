"""git-remote-theta: `theta::<url>` remotes that move refs and tensor objects in one command."""

from __future__ import annotations

import io

import pytest
from helpers import sha256_file, store_oids
from remote_scenarios import MODEL, History, commit_versions, init_clone, run_round_trip

from git_theta_filter.gitrepo import GitError, GitRepo
from git_theta_filter.remote_helper import HelperProtocolError, RemoteHelper, _porcelain_statuses


def test_round_trip_through_theta_urls(git_env, tmp_path):
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    a, b, history = run_round_trip(git_env, tmp_path, f"theta::{bare}")

    # The clone's fetch prefetched every version, so no checkout had to fetch on demand.
    store = {path.name for path in (bare / "theta" / "objects").glob("*/*/*")}
    assert store and store <= store_oids(b)  # loose (fetched) or packed (made in b)
    git_env.theta(a, "fsck", "--all")


def test_clone_through_theta_url_prefetches_all_fetched_commits(git_env, tmp_path):
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    a = init_clone(git_env, tmp_path / "A", f"theta::{bare}")
    history = History()
    commit_versions(git_env, a, range(2), history)
    pushed = git_env.run("git", "push", "origin", "main", cwd=a)
    assert b"uploaded" in pushed.stderr and b"[new branch]" in pushed.stderr

    b = tmp_path / "B"
    git_env.run("git", "clone", "-q", f"theta::{bare}", str(b), env={"GIT_THETA_SKIP_SMUDGE": "1"})
    assert {p.name for p in (b / ".git" / "theta" / "objects").glob("*/*/*")} == {
        p.name for p in (bare / "theta" / "objects").glob("*/*/*")
    }
    git_env.theta(b, "pull")
    assert sha256_file(b / MODEL) == list(history.files.values())[-1]

    # A non-fast-forward push is reported per ref, as git reports it.
    git_env.git(a, "commit", "-q", "--amend", "-m", "rewritten")
    rejected = git_env.run("git", "push", "origin", "main", cwd=a, check=False)
    assert rejected.returncode != 0
    assert b"[rejected]" in rejected.stderr and b"main -> main" in rejected.stderr


def test_push_through_theta_url_is_refused_when_the_store_is_unreachable(git_env, tmp_path):
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    a = init_clone(git_env, tmp_path / "A", f"theta::{bare}")
    git_env.git(a, "config", "theta.remote.origin.url", str(tmp_path / "not-mounted" / "objects"))
    commit_versions(git_env, a, range(1), History())

    result = git_env.run("git", "push", "origin", "main", cwd=a, check=False)
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert "[remote rejected] main -> main" in stderr and "not-mounted is not a directory" in stderr
    assert git_env.git(bare, "for-each-ref") == ""


def test_helper_refuses_to_run_inside_itself(git_env, tmp_path):
    repo = tmp_path / "repo"
    git_env.run("git", "init", "-q", str(repo))
    nested = git_env.run(
        "git-remote-theta",
        "origin",
        "theta::/somewhere",
        cwd=repo,
        check=False,
        input=b"capabilities\n",
    )
    assert nested.returncode != 0 and b"leads back to git-remote-theta" in nested.stderr
    assert nested.stdout == b""

    # An inner URL that git rewrites back to theta:: is caught by the guard variable.
    git_env.git(repo, "config", "url.theta::/elsewhere.insteadOf", "loop:")
    looped = git_env.run("git", "ls-remote", "theta::loop:", cwd=repo, check=False)
    assert looped.returncode != 0 and b"leads back to git-remote-theta" in looped.stderr


def test_helper_session_capabilities_options_and_list(git_env, tmp_path, monkeypatch):
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    source = tmp_path / "source"
    git_env.run("git", "init", "-q", str(source))
    git_env.git(source, "commit", "-q", "--allow-empty", "-m", "one")
    git_env.git(source, "push", "-q", str(bare), "main")
    head = git_env.git(source, "rev-parse", "HEAD").strip()
    for key, value in git_env.env.items():
        monkeypatch.setenv(key, value)

    answers = io.BytesIO()
    commands = io.BytesIO(b"capabilities\noption verbosity 0\noption depth 1\nlist\n\n")
    RemoteHelper(GitRepo.discover(source), "origin", str(bare), commands, answers).serve()
    assert (
        answers.getvalue().decode()
        == f"fetch\npush\noption\n\nok\nunsupported\n@refs/heads/main HEAD\n{head} "
        "refs/heads/main\n\n"
    )


def test_helper_session_refuses_a_command_it_does_not_know(git_env, tmp_path, monkeypatch):
    # A newer git's command is not guessed at: the session ends, naming it.
    source = tmp_path / "source"
    git_env.run("git", "init", "-q", str(source))
    for key, value in git_env.env.items():
        monkeypatch.setenv(key, value)
    answers = io.BytesIO()
    commands = io.BytesIO(b"capabilities\nstateless-connect git-upload-pack\nlist\n\n")
    helper = RemoteHelper(
        GitRepo.discover(source), "origin", str(tmp_path / "x.git"), commands, answers
    )
    with pytest.raises(HelperProtocolError, match="unexpected command 'stateless-connect"):
        helper.serve()
    assert answers.getvalue() == b"fetch\npush\noption\n\n"


def test_helper_fetch_of_a_commit_the_remote_lacks_fails_naming_the_url(
    git_env, tmp_path, monkeypatch
):
    # Git asks for commits by id: one that the remote no longer has must fail the fetch
    # there, not be passed on as fetched.
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    local = tmp_path / "local"
    git_env.run("git", "init", "-q", str(local))
    for key, value in git_env.env.items():
        monkeypatch.setenv(key, value)

    commands = io.BytesIO(f"fetch {'1' * 40} refs/heads/main\n\n".encode())
    helper = RemoteHelper(GitRepo.discover(local), "origin", str(bare), commands, io.BytesIO())
    with pytest.raises(GitError, match=f"could not fetch from {bare}$"):
        helper.serve()


def test_porcelain_statuses_are_read_per_destination():
    output = (
        "To /srv/models.git\n"
        "*\trefs/heads/new:refs/heads/new\t[new branch]\n"
        "!\trefs/heads/main:refs/heads/main\t[rejected] (non-fast-forward)\n"
        "-\t:refs/heads/gone\t[deleted]\n"
        "Done\n"
    )
    assert _porcelain_statuses(output) == {
        "refs/heads/new": ("*", "[new branch]"),
        "refs/heads/main": ("!", "non-fast-forward"),
        "refs/heads/gone": ("-", "[deleted]"),
    }
