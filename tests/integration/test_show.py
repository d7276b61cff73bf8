"""`git theta show <rev>:<path>`: a model file's real bytes at a revision, not its manifest."""

from __future__ import annotations

import hashlib
import io
import os
import pty
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import commit_all, mlp_checkpoint, object_path, read_manifest, save, sha256_file


@pytest.fixture
def history(git_env, repo: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """Two committed versions of models/model.pth (and a plain file), pushed to a bare remote;
    returns the repository and the versions' sha256s."""
    digests = []
    for version in range(2):
        digests.append(save(mlp_checkpoint(version), repo / "models" / "model.pth"))
        (repo / "notes.txt").write_text(f"notes {version}\n")
        commit_all(git_env, repo, "models/model.pth", "notes.txt", message=f"v{version}")
    bare = tmp_path / "shared.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    git_env.git(repo, "remote", "add", "origin", str(bare))
    git_env.git(repo, "push", "-q", "origin", "main")
    return repo, digests


def show(git_env, repo: Path, *args: str, **kwargs):
    return git_env.run("git", "theta", "show", *args, cwd=repo, **kwargs)


def test_show_writes_each_version_byte_exact(git_env, history) -> None:
    repo, digests = history
    old = show(git_env, repo, "HEAD~1:models/model.pth").stdout
    assert hashlib.sha256(old).hexdigest() == digests[0]
    # What torch reads from it is the model, without weights_only=False.
    loaded = torch.load(io.BytesIO(old), weights_only=True)
    assert torch.equal(loaded["0.weight"], mlp_checkpoint(0)["0.weight"])
    # `git show` gives the manifest; ours gives the file.
    assert git_env.run("git", "show", "HEAD~1:models/model.pth", cwd=repo).stdout != old

    out = repo / "restored.pth"
    show(git_env, repo, "HEAD:models/model.pth", "-o", str(out))
    assert sha256_file(out) == digests[1]
    # From a subdirectory, ./ is relative to it; :<path> is the index.
    here = show(git_env, repo / "models", "HEAD~1:./model.pth").stdout
    assert hashlib.sha256(here).hexdigest() == digests[0]
    staged = show(git_env, repo, ":models/model.pth").stdout
    assert hashlib.sha256(staged).hexdigest() == digests[1]
    # A file theta does not track comes out as git stores it.
    assert show(git_env, repo, "HEAD~1:notes.txt").stdout == b"notes 0\n"


def test_show_fetches_objects_a_fresh_clone_lacks(git_env, history, tmp_path: Path) -> None:
    repo, digests = history
    clone = tmp_path / "clone"
    git_env.run(
        "git",
        "clone",
        "-q",
        str(tmp_path / "shared.git"),
        str(clone),
        env={"GIT_THETA_SKIP_SMUDGE": "1"},
    )
    assert not list((clone / ".git" / "theta" / "objects").glob("*/*/*"))
    out = show(git_env, clone, "HEAD~1:models/model.pth").stdout
    assert hashlib.sha256(out).hexdigest() == digests[0]


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        ("HEAD:nothing.pth", 128, "path 'nothing.pth' does not exist in HEAD"),
        (":nothing.pth", 128, "path 'nothing.pth' does not exist in the index"),
        ("HEAD:models", 128, "path 'models' does not exist in HEAD"),
        ("no-such-rev:models/model.pth", 128, "bad revision 'no-such-rev'"),
        ("models/model.pth", 2, "does not name a file at a revision; write <rev>:<path>"),
    ],
)
def test_show_names_what_is_wrong(git_env, history, spec: str, code: int, message: str) -> None:
    repo, _ = history
    result = show(git_env, repo, spec, check=False)
    assert result.returncode == code
    assert message in result.stderr.decode()
    assert result.stdout == b""


def test_show_leaves_no_file_when_an_object_is_corrupt(git_env, history) -> None:
    repo, _ = history
    manifest = read_manifest(git_env, repo, "HEAD:models/model.pth")
    victim = object_path(repo, manifest.tensors[0].oid)
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    out = repo / "restored.pth"
    result = show(git_env, repo, "HEAD:models/model.pth", "-o", str(out), check=False)
    assert result.returncode != 0
    assert "models/model.pth" in result.stderr.decode()
    assert not out.exists()
    assert [p.name for p in repo.iterdir() if p.name.startswith(".restored")] == []


def test_show_refuses_to_write_a_model_to_a_terminal(git_env, history) -> None:
    repo, _ = history
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            ["git", "theta", "show", "HEAD:models/model.pth"],
            cwd=repo,
            env=git_env.env,
            stdout=terminal,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 2
    assert "refusing to write a model file to a terminal" in result.stderr.decode()


def test_restore_cat_file_filters_and_archive_give_the_real_file(git_env, history) -> None:
    """What docs/remotes.md ("Getting a model out of history") says git itself does."""
    repo, digests = history
    path = "models/model.pth"
    filtered = git_env.run("git", "cat-file", "--filters", f"HEAD~1:{path}", cwd=repo).stdout
    assert hashlib.sha256(filtered).hexdigest() == digests[0]

    archive = git_env.run("git", "archive", "HEAD~1", path, cwd=repo).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.extractfile(path)
        assert member is not None
        assert hashlib.sha256(member.read()).hexdigest() == digests[0]

    git_env.git(repo, "restore", "--source=HEAD~1", "--", path)
    assert sha256_file(repo / path) == digests[0]
    git_env.git(repo, "restore", "--", path)
    assert git_env.git(repo, "status", "--porcelain") == ""


def test_push_all_moves_the_tensors_of_a_mirror_and_of_a_bundle(
    git_env, history, tmp_path: Path
) -> None:
    """docs/remotes.md, "Mirrors, archives and bundles": the recipes work as written."""
    repo, digests = history
    mirror = tmp_path / "mirror.git"
    git_env.run("git", "clone", "-q", "--mirror", str(tmp_path / "shared.git"), str(mirror))
    assert not (mirror / "theta").exists(), "a mirror clone has no store"
    git_env.git(repo, "remote", "add", "mirror", str(mirror))
    git_env.theta(repo, "push", "--all", "mirror")

    # A bundle with a directory store beside it, named for the bundle's remote.
    usb = tmp_path / "usb"
    usb.mkdir()
    git_env.git(repo, "bundle", "create", "-q", str(usb / "models.bundle"), "--all")
    git_env.git(repo, "remote", "add", "usb", str(usb / "models.bundle"))
    git_env.git(repo, "config", "theta.remote.usb.url", str(usb / "theta-objects"))
    git_env.theta(repo, "push", "--all", "usb")

    store = f"theta.remote.origin.url={usb / 'theta-objects'}"
    for source, options in ((mirror, ()), (usb / "models.bundle", ("-c", store))):
        clone = tmp_path / f"from-{source.name}"
        git_env.run("git", "clone", "-q", *options, str(source), str(clone))
        assert sha256_file(clone / "models" / "model.pth") == digests[1]
        git_env.git(clone, "checkout", "-q", "HEAD~1")
        assert sha256_file(clone / "models" / "model.pth") == digests[0]
