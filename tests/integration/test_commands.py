"""Everyday commands: ls-files, du, fsck, and --help on every subcommand."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from helpers import (
    commit_all,
    copy_repo,
    isolated_git_env,
    local_store,
    mlp_checkpoint,
    object_path,
    read_manifest,
    save,
    sha256_file,
    store_oids,
    tracked_repo,
)

import git_theta_filter
from git_theta_filter.cli import COMMANDS, main
from git_theta_filter.installation import install

SIZES = (16, 32, 32, 8)  # 6 tensors


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """model.pth in two commits (the second fine-tunes 2 of 6 tensors), plus an opaque file."""
    root = tmp_path_factory.mktemp("commands")
    git_env = isolated_git_env(root)
    repo = tracked_repo(git_env, root / "template")
    save(mlp_checkpoint(0, SIZES), repo / "model.pth")
    (repo / "notes.bin").write_bytes(os.urandom(2000))
    commit_all(git_env, repo, "model.pth", "notes.bin", message="v1")
    checkpoint = mlp_checkpoint(0, SIZES)
    checkpoint["4.weight"] += 0.5
    checkpoint["4.bias"] -= 0.5
    save(checkpoint, repo / "model.pth")
    commit_all(git_env, repo, "model.pth", message="fine-tune the last layer")
    return git_env, repo


@pytest.fixture
def repo_copy(template: tuple, tmp_path: Path) -> tuple:
    git_env, template_repo = template
    return git_env, copy_repo(template_repo, tmp_path / "repo")


def theta_json(git_env, repo: Path, *args: str) -> object:
    return json.loads(git_env.theta(repo, *args, "--json").stdout)


def file_size(repo: Path, oid: str) -> int:
    """The bytes the object takes in the store, however it is stored."""
    return local_store(repo).size(oid)


def test_ls_files_json_counts_tensors_size_and_new_bytes(repo_copy: tuple) -> None:
    git_env, repo = repo_copy
    v1 = read_manifest(git_env, repo, "HEAD~1:model.pth")
    v2 = read_manifest(git_env, repo, "HEAD:model.pth")
    notes = read_manifest(git_env, repo, "HEAD:notes.bin")
    new_in_v2 = v2.object_ids() - v1.object_ids()
    assert len(new_in_v2) == 3  # two tensors and the skeleton
    entries = {e["path"]: e for e in theta_json(git_env, repo, "ls-files")}
    assert entries == {
        "model.pth": {
            "path": "model.pth",
            "format": "torch-zip",
            "tensors": 6,
            "size": (repo / "model.pth").stat().st_size,
            "new_bytes": sum(v2.payload_lengths()[oid] for oid in new_in_v2),
            "missing_objects": 0,
        },
        "notes.bin": {
            "path": "notes.bin",
            "format": "opaque",
            "tensors": 0,
            "size": 2000,
            "new_bytes": sum(notes.payload_lengths().values()),
            "missing_objects": 0,
        },
    }


def test_ls_files_table(repo_copy: tuple) -> None:
    git_env, repo = repo_copy
    lines = git_env.theta(repo, "ls-files").stdout.decode().splitlines()
    assert lines[0].split() == ["path", "format", "tensors", "size", "new"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert sorted(rows) == ["model.pth", "notes.bin"]
    assert rows["model.pth"][1:3] == ["torch-zip", "6"]
    assert rows["notes.bin"][1:5] == ["opaque", "0", "2.0", "KB"]


def test_ls_files_counts_missing_objects(repo_copy: tuple) -> None:
    git_env, repo = repo_copy
    v2 = read_manifest(git_env, repo, "HEAD:model.pth")
    object_path(repo, v2.tensors[0].oid).unlink()
    entries = {e["path"]: e for e in theta_json(git_env, repo, "ls-files")}
    assert entries["model.pth"]["missing_objects"] == 1
    assert entries["notes.bin"]["missing_objects"] == 0
    assert "1 missing" in git_env.theta(repo, "ls-files").stdout.decode()


def test_du_json_reports_logical_stored_and_dedup_ratio(repo_copy: tuple) -> None:
    git_env, repo = repo_copy
    versions = [
        read_manifest(git_env, repo, spec)
        for spec in ("HEAD~1:model.pth", "HEAD:model.pth", "HEAD:notes.bin")
    ]
    referenced = set().union(*(m.object_ids() for m in versions))
    usage = theta_json(git_env, repo, "du")
    logical = sum(m.size for m in versions)
    stored = sum(file_size(repo, oid) for oid in referenced)
    assert usage["file_versions"] == 3
    assert usage["logical_bytes"] == logical
    assert usage["referenced_objects"] == len(referenced)
    assert usage["referenced_bytes"] == stored
    assert usage["missing_objects"] == 0
    assert usage["store_objects"] == len(store_oids(repo)) == len(referenced)
    assert usage["dedup_ratio"] == pytest.approx(logical / stored)
    # The fine-tune stored only what changed, so two versions cost less than twice one.
    assert usage["dedup_ratio"] > 1.2

    lines = git_env.theta(repo, "du").stdout.decode().splitlines()
    assert [line.split()[0] for line in lines] == ["logical", "stored", "dedup", "store"]
    assert lines[0].endswith(f"in {usage['file_versions']} file versions")
    assert lines[1].endswith(f"in {usage['referenced_objects']} objects")
    assert lines[2].split()[1] == f"{usage['dedup_ratio']:.2f}x"


def test_fsck_passes_on_a_healthy_repository(repo_copy: tuple) -> None:
    git_env, repo = repo_copy
    result = git_env.theta(repo, "fsck")
    count = len(store_oids(repo))
    assert result.returncode == 0
    lines = (result.stdout + result.stderr).decode().splitlines()
    assert lines == [f"{count} objects checked, 0 corrupt, 0 missing"]
    report = theta_json(git_env, repo, "fsck")
    assert report == {"ok": True, "checked": count, "corrupt": {}, "missing": {}}


def test_fsck_names_a_deleted_object(repo_copy: tuple) -> None:
    git_env, repo = repo_copy
    v2 = read_manifest(git_env, repo, "HEAD:model.pth")
    victim = {t.name: t.oid for t in v2.tensors}["4.weight"]
    object_path(repo, victim).unlink()
    result = git_env.run("git", "theta", "fsck", cwd=repo, check=False)
    assert result.returncode == 1
    out = result.stdout.decode().splitlines()
    assert f"missing {victim} (needed by model.pth)" in out
    assert out[-1].endswith("0 corrupt, 1 missing")
    assert "git theta fetch" in result.stderr.decode()
    report = json.loads(git_env.run("git", "theta", "fsck", "--json", cwd=repo, check=False).stdout)
    assert (
        report["ok"] is False
        and report["missing"] == {victim: ["model.pth"]}
        and report["corrupt"] == {}
    )


def test_fsck_all_finds_objects_missing_from_older_history(repo_copy: tuple) -> None:
    git_env, repo = repo_copy
    v1 = read_manifest(git_env, repo, "HEAD~1:model.pth")
    victim = {t.name: t.oid for t in v1.tensors}["4.weight"]  # replaced by the fine-tune
    object_path(repo, victim).unlink()
    assert git_env.run("git", "theta", "fsck", cwd=repo, check=False).returncode == 0
    result = git_env.run("git", "theta", "fsck", "--all", cwd=repo, check=False)
    assert result.returncode == 1
    assert f"missing {victim} (needed by model.pth)" in result.stdout.decode()


def test_fsck_names_a_corrupt_object(repo_copy: tuple) -> None:
    git_env, repo = repo_copy
    notes = read_manifest(git_env, repo, "HEAD:notes.bin")
    victim = notes.splices[0].oid
    path = object_path(repo, victim)
    path.chmod(0o644)  # objects are read-only
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    got = sha256_file(path)
    report = json.loads(git_env.run("git", "theta", "fsck", "--json", cwd=repo, check=False).stdout)
    assert report["ok"] is False and list(report["corrupt"]) == [victim] and report["missing"] == {}
    # Moved out of the store, so a fetch can restore it: from now on it is missing.
    bad = repo / ".git" / "theta" / "bad" / victim
    assert not path.exists() and sha256_file(bad) == got
    result = git_env.run("git", "theta", "fsck", cwd=repo, check=False)
    assert result.returncode == 1
    assert f"missing {victim} (needed by notes.bin)" in result.stdout.decode().splitlines()


def test_fsck_moves_a_corrupt_object_out_of_the_store(repo_copy: tuple) -> None:
    git_env, repo = repo_copy
    victim = read_manifest(git_env, repo, "HEAD:notes.bin").splices[0].oid
    path = object_path(repo, victim)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    got = sha256_file(path)
    result = git_env.run("git", "theta", "fsck", cwd=repo, check=False)
    assert result.returncode == 1
    bad = repo / ".git" / "theta" / "bad" / victim
    assert (
        f"corrupt {victim}: content hashes to {got}; moved to {bad}"
        in result.stdout.decode().splitlines()
    )


def test_fsck_names_a_truncated_object(repo_copy: tuple) -> None:
    git_env, repo = repo_copy
    v2 = read_manifest(git_env, repo, "HEAD:model.pth")
    victim = v2.skeleton
    path = object_path(repo, victim)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-10])
    result = git_env.run("git", "theta", "fsck", cwd=repo, check=False)
    assert result.returncode == 1
    (line,) = [line for line in result.stdout.decode().splitlines() if line.startswith("corrupt ")]
    assert line.startswith(f"corrupt {victim}: file is ")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_works_for_every_subcommand(command: str, capsys: pytest.CaptureFixture) -> None:
    # In process: the same parser `git-theta` builds, without a process start per command.
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    # Some commands are also git aliases (`git theta-log`) and name themselves so.
    assert re.match(rf"usage: git theta[ -]{re.escape(command)}\b", captured.out), captured.out[
        :200
    ]
    assert "-h, --help" in captured.out
    assert captured.err == ""


@pytest.mark.parametrize("command", ["ls-files", "du", "fsck"])
def test_help_through_git(template: tuple, command: str) -> None:
    git_env, repo = template
    result = git_env.theta(repo, command, "--help")
    assert result.stdout.decode().startswith(f"usage: git theta {command}")
    assert result.stderr == b""


def test_help_lists_every_subcommand(template: tuple) -> None:
    git_env, repo = template
    out = git_env.run("git-theta", "--help", cwd=repo).stdout.decode()
    for command in COMMANDS:
        assert command in out
    bare = git_env.run("git-theta", cwd=repo, check=False)
    assert bare.returncode == 2
    assert bare.stdout.decode().startswith("usage: git theta")


def test_unknown_command_suggests_the_closest_one_as_git_does(template: tuple) -> None:
    git_env, repo = template
    typo = git_env.run("git", "theta", "trak", cwd=repo, check=False)
    assert typo.returncode == 2 and typo.stdout == b""
    assert typo.stderr.decode().splitlines() == [
        "git theta: 'trak' is not a git-theta command. See 'git theta --help'.",
        "",
        "The most similar command is",
        "\ttrack",
    ]
    unrelated = git_env.run("git-theta", "zzzz", cwd=repo, check=False)
    assert unrelated.returncode == 2
    assert unrelated.stderr.decode().splitlines() == [
        "git theta: 'zzzz' is not a git-theta command. See 'git theta --help'."
    ]


def test_install_quotes_an_interpreter_path_with_a_space(git_env, tmp_path):
    """git runs filter.theta.process through the shell:
    an interpreter whose path has a space must still start the filter.
    """
    spaced = tmp_path / "my tools"
    spaced.mkdir()
    python = spaced / "python3"
    python.symlink_to(sys.executable)
    script = shutil.which("git-theta", path=str(Path(sys.executable).parent))
    git_env.run(str(python), script, "install", "--global", cwd=git_env.home)
    process = _config(git_env, "filter.theta.process")
    client = Path(git_theta_filter.__file__).resolve().with_name("filter_client.py")
    assert process == f"'{python}' -S {client}"
    repo = tmp_path / "spaced-repo"
    git_env.run("git", "init", "-q", str(repo))
    (repo / ".gitattributes").write_text("*.bin filter=theta -text\n")
    (repo / "x.bin").write_bytes(b"\x00" * 100)
    git_env.git(repo, "add", "x.bin")
    assert git_env.git(repo, "cat-file", "-p", ":x.bin").startswith("git-theta-manifest 1\n")


def _config(git_env, key: str) -> str:
    result = git_env.run("git", "config", "--global", key, cwd=git_env.home)
    return result.stdout.decode().strip()


def _installed_merge_driver(git_env, script: Path, path: str) -> str:
    """The merge driver is started by the script's name (the filter, through its client)."""
    git_env.run(str(script), "install", "--global", cwd=git_env.home, env={"PATH": path})
    return _config(git_env, "merge.theta.driver")


def test_install_names_the_script_when_it_is_the_only_git_theta_on_path(git_env):
    bin_dir = Path(sys.executable).parent
    script = bin_dir / "git-theta"
    assert _installed_merge_driver(git_env, script, f"{bin_dir}:/usr/bin:/bin") == (
        "git-theta merge %O %A %B %P"
    )


def test_install_writes_the_script_path_when_a_shim_is_also_on_path(git_env, tmp_path):
    """A version manager's shim (pyenv's runs several bash scripts per start) comes first
    in the user's shell, though `pyenv exec` put the real script first for install."""
    bin_dir = Path(sys.executable).parent
    script = bin_dir / "git-theta"
    shims = tmp_path / "shims"
    shims.mkdir()
    shim = shims / "git-theta"
    shim.write_text(f'#!/bin/sh\nexec "{script}" "$@"\n')
    shim.chmod(0o755)
    driver = _installed_merge_driver(git_env, script, f"{bin_dir}:{shims}:/usr/bin:/bin")
    assert driver == f"{script.resolve()} merge %O %A %B %P"


def test_metrics_add_refuses_a_file_outside_the_repository(git_env, repo: Path) -> None:
    # .thetaconfig names files inside the repository; a path above it would be written
    # there and then refused by every reader.
    result = git_env.theta(repo, "metrics", "add", "../results.json", check=False)
    assert result.returncode != 0
    assert f"../results.json: outside the repository at {repo}" in result.stderr.decode()
    assert not (repo / ".thetaconfig").exists()


@pytest.mark.parametrize(
    ("scope", "message"),
    [("local", "--local needs a repository"), ("worktree", "unknown config scope 'worktree'")],
)
def test_install_refuses_a_scope_it_cannot_write_before_writing_any(
    git_env, tmp_path, monkeypatch, scope: str, message: str
) -> None:
    # Outside any repository, with the test's HOME: a refusal that came too late would
    # show in the global config.
    for key, value in git_env.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    before = (git_env.home / ".gitconfig").read_text()
    with pytest.raises(ValueError, match=message):
        install(scope, None)
    assert (git_env.home / ".gitconfig").read_text() == before


@pytest.mark.parametrize("command", ["install", "uninstall"])
def test_install_local_outside_a_repository_says_so_as_any_command_does(
    git_env, tmp_path, command: str
) -> None:
    # Not "ValueError: --local needs a repository": the user's mistake, named like one.
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    result = git_env.run("git", "theta", command, "--local", cwd=outside, check=False)
    assert result.returncode == 128
    assert result.stderr.decode() == f"git-theta: error: not a git repository: {outside}\n"
