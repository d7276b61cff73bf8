"""The repository as the commands see it (gitrepo.py): discover, require_worktree, and
the line of git's stderr that a GitError quotes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from git_theta_filter.gitrepo import (
    BadStoreSettingError,
    GitError,
    GitRepo,
    NotARepositoryError,
    NoWorkTreeError,
    is_git_object_id,
)


@pytest.fixture
def bare(git_env, tmp_path: Path) -> Path:
    path = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(path))
    return path


def test_require_worktree_gives_the_top_of_the_work_tree(git_env, repo: Path) -> None:
    (repo / "models").mkdir()
    assert GitRepo.discover(repo / "models").require_worktree() == repo.resolve()
    with pytest.raises(NoWorkTreeError, match="needs a work tree"):
        GitRepo.discover(repo / ".git").require_worktree()  # inside the git dir there is none


def test_require_worktree_in_a_bare_repository_names_what_needed_one(git_env, bare: Path) -> None:
    with pytest.raises(NoWorkTreeError) as caught:
        GitRepo.discover(bare).require_worktree("git theta pull")
    assert str(caught.value) == f"{bare}: git theta pull needs a work tree, and there is none here"
    assert caught.value.exit_code == 128
    assert caught.value.hint.endswith(f"`git clone {bare} <directory>`")


def test_discover_finds_a_linked_worktree_and_the_common_dir_it_shares(
    git_env, repo: Path, tmp_path: Path
) -> None:
    linked = tmp_path / "linked"
    git_env.git(repo, "worktree", "add", "-q", str(linked))
    (linked / "models").mkdir()
    found = GitRepo.discover(linked / "models")
    assert found.worktree == linked.resolve()
    assert found.common_dir == (repo / ".git").resolve()
    assert found.git_dir == (repo / ".git" / "worktrees" / "linked").resolve()


def test_discover_outside_any_repository_names_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    with pytest.raises(NotARepositoryError, match=f"not a git repository: {outside}"):
        GitRepo.discover(outside)


@pytest.mark.parametrize(
    "command",
    [["pull"], ["track", "*.pth"], ["commit", "-m", "m", "a.pth"], ["metrics", "add", "m.json"]],
)
def test_commands_that_write_the_work_tree_refuse_a_bare_repository(
    git_env, bare: Path, command: list[str]
) -> None:
    result = git_env.theta(bare, *command, check=False)
    assert result.returncode == 128
    what = " ".join(command[:2] if command[0] == "metrics" else command[:1])
    assert f"git theta {what} needs a work tree" in result.stderr.decode()


@pytest.mark.parametrize(
    ("text", "is_id"),
    [
        ("a" * 40, True),
        ("0123456789abcdef" * 4, True),  # sha256 repositories
        ("a" * 39, False),
        ("a" * 41, False),
        ("A" * 40, False),  # git writes lowercase
        ("a" * 40 + "\n", False),
        ("ref: refs/heads/main", False),
    ],
)
def test_is_git_object_id_takes_full_sha1_and_sha256_ids_only(text: str, is_id: bool) -> None:
    assert is_git_object_id(text) is is_id


def test_store_settings_are_read_from_git_config_and_a_value_past_use_is_refused(
    git_env, repo: Path
) -> None:
    settings = GitRepo.discover(repo).store_settings()
    assert (settings.compression, settings.max_delta_depth) == (True, 10)
    git_env.git(repo, "config", "theta.compression", "off")
    git_env.git(repo, "config", "theta.maxDeltaDepth", "255")
    settings = GitRepo.discover(repo).store_settings()
    assert (settings.compression, settings.max_delta_depth) == (False, 255)
    for key, value in (
        ("theta.compression", "maybe"),
        ("theta.maxDeltaDepth", "256"),  # past the depth a stored object can say
        ("theta.maxDeltaDepth", "-1"),
        ("theta.maxDeltaDepth", "ten"),
    ):
        git_env.git(repo, "config", key, value)
        with pytest.raises(BadStoreSettingError, match=f"{value!r}"):
            GitRepo.discover(repo).store_settings()
        git_env.git(repo, "config", "--unset", key)


# What `git add -u` printed when the clean filter failed (git 2.39), in the orders a
# filter's line and git's own can reach stderr: which of git's lines comes last depends
# on when the filter process exited.
THETA_ERROR = (
    "model.pth: cannot write objects to /repo/.git/theta: No space left on device; free some "
    "disk space (`git theta gc` deletes objects nothing needs), then run the command again"
)
OUR_LINE = f"git-theta: error: {THETA_ERROR}"
HUNG_UP = "fatal: the remote end hung up unexpectedly"
FILTER_FAILED = "error: external filter 'git-theta-filter' failed"
CLEAN_FAILED = "fatal: model.pth: clean filter 'theta' failed"


@pytest.mark.parametrize(
    "lines",
    [
        [OUR_LINE, HUNG_UP],
        [HUNG_UP, OUR_LINE],
        [OUR_LINE, FILTER_FAILED, CLEAN_FAILED],
        [FILTER_FAILED, CLEAN_FAILED, OUR_LINE],
    ],
)
def test_a_git_error_from_a_failed_filter_quotes_the_filters_own_error(lines: list[str]) -> None:
    assert str(GitError(["add", "-u"], "\n".join(lines) + "\n")) == f"`git add -u`: {THETA_ERROR}"


@pytest.mark.parametrize(
    ("lines", "quoted"),
    [
        # Another filter, which says nothing: git's line naming the file, then the filter.
        (["error: initialization for subprocess 'false' failed", CLEAN_FAILED], CLEAN_FAILED),
        ([CLEAN_FAILED, HUNG_UP], CLEAN_FAILED),
        ([FILTER_FAILED, CLEAN_FAILED], CLEAN_FAILED),
        ([FILTER_FAILED, HUNG_UP], FILTER_FAILED),
        ([HUNG_UP, FILTER_FAILED], FILTER_FAILED),
    ],
)
def test_a_git_error_from_a_failed_filter_quotes_gits_line_naming_it(
    lines: list[str], quoted: str
) -> None:
    assert str(GitError(["add", "-u"], "\n".join(lines) + "\n")) == f"`git add -u`: {quoted}"


@pytest.mark.parametrize(
    ("stderr", "quoted"),
    [
        ("fatal: no\n", "fatal: no"),
        ("warning: one\nerror: two\nfatal: three\n\n", "fatal: three"),
        (f"{HUNG_UP}\n", HUNG_UP),  # nothing names a filter: the last line, as ever
        ("", "failed"),
        ("  \n", "failed"),
    ],
)
def test_any_other_git_error_quotes_gits_last_line(stderr: str, quoted: str) -> None:
    assert str(GitError(["fetch", "origin"], stderr)) == f"`git fetch origin`: {quoted}"
