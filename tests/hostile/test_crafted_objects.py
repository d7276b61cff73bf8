"""Objects crafted by an attacker, or damaged or deleted by hand, in the local store.

Each is refused when a checkout needs it (naming the object, writing no
file), named by `git theta fsck`, and restored by `git theta fetch` from the
remote store: a bare repository on disk, whose store is ``<bare>/theta/objects``.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    assert_status_clean,
    copy_repo,
    isolated_git_env,
    mlp_checkpoint,
    object_path,
    read_manifest,
    save,
    sha256_file,
    tracked_repo,
)

from git_theta_filter.store.object_format import MAX_OBJECT_HEADER

MODEL = "model.pth"


def writable(path: Path) -> Path:
    path.chmod(0o644)  # objects are read-only
    return path


def header_over_limit(path: Path) -> None:
    data = path.read_bytes()
    writable(path).write_bytes(struct.pack("<Q", MAX_OBJECT_HEADER + 1) + data[8:])


def offsets_disagree(path: Path) -> None:
    data = path.read_bytes()
    (length,) = struct.unpack_from("<Q", data)
    entry = json.loads(data[8 : 8 + length])["tensor"]
    entry["data_offsets"][1] += 4  # one element more than dtype x shape
    body = json.dumps({"tensor": entry}, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    writable(path).write_bytes(struct.pack("<Q", len(body)) + body + data[8 + length :] + bytes(4))


def payload_sha256_mismatch(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # same size and header: only the hash can tell
    writable(path).write_bytes(bytes(data))


def symlink_in_store(path: Path) -> None:
    """A link to a perfectly good copy elsewhere: objects are files, never links."""
    target = path.parent.parent.parent.parent / "elsewhere" / path.name
    target.parent.mkdir(exist_ok=True)
    shutil.copyfile(path, target)
    path.unlink()
    path.symlink_to(target)


def truncated(path: Path) -> None:
    writable(path).write_bytes(path.read_bytes()[:-7])


def deleted(path: Path) -> None:
    path.unlink()


# name -> (damage, what checkout reports about the object, what fsck reports)
CASES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "header-over-limit": (
        header_over_limit,
        "is corrupt: header of 65537 bytes is over the 65536-byte limit",
        "corrupt {oid}: header of 65537 bytes",
    ),
    "offsets-disagree": (
        offsets_disagree,
        "is corrupt: data_offsets [0, 3076] disagree with F32[32, 24] (3072 bytes)",
        "corrupt {oid}: data_offsets",
    ),
    "payload-sha256-mismatch": (
        payload_sha256_mismatch,
        "rebuilt file hashes to",
        "corrupt {oid}: content hashes to",
    ),
    "symlink-in-store": (
        symlink_in_store,
        "is corrupt: is a symbolic link",
        "corrupt {oid}: is a symbolic link",
    ),
    "truncated": (truncated, "is corrupt: file is", "corrupt {oid}: file is"),
    "deleted": (deleted, "is missing from the local store", "missing {oid} (needed by model.pth)"),
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A clone that pushed one model to a bare repository on disk (objects went to its store)."""
    root = tmp_path_factory.mktemp("crafted-objects")
    git_env = isolated_git_env(root)
    bare = root / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    repo = tracked_repo(git_env, root / "repo")
    save({"model": mlp_checkpoint(4, (24, 32, 8)), "epoch": 1}, repo / MODEL)
    git_env.git(repo, "add", MODEL)
    git_env.git(repo, "commit", "-qm", "model")
    git_env.git(repo, "remote", "add", "origin", str(bare))
    git_env.git(repo, "push", "-q", "origin", "main")
    assert (bare / "theta" / "objects").is_dir()
    return git_env, repo, sha256_file(repo / MODEL)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_damaged_object_is_refused_named_by_fsck_and_restored_by_fetch(
    template: tuple, tmp_path: Path, name: str
) -> None:
    git_env, template_repo, digest = template
    repo = copy_repo(template_repo, tmp_path / "repo")
    damage, checkout_error, fsck_line = CASES[name]
    manifest = read_manifest(git_env, repo, f"HEAD:{MODEL}")
    victim = {t.name: t.oid for t in manifest.tensors}["model.0.weight"]
    damage(object_path(repo, victim))
    (repo / MODEL).unlink()

    if name != "deleted":  # a missing object is fetched on demand by the checkout itself
        result = git_env.run("git", "checkout", "--", MODEL, cwd=repo, check=False)
        assert result.returncode != 0
        stderr = result.stderr.decode()
        assert f"git-theta: error: {MODEL}: " in stderr and checkout_error in stderr, stderr
        if name != "payload-sha256-mismatch":  # found only by hashing the whole rebuilt file
            assert victim in stderr
        assert not (repo / MODEL).exists(), "a refused smudge left a file in the work tree"

    fsck = git_env.run("git", "theta", "fsck", cwd=repo, check=False)
    assert fsck.returncode == 1
    assert any(
        line.startswith(fsck_line.format(oid=victim)) for line in fsck.stdout.decode().splitlines()
    ), fsck.stdout.decode()

    git_env.theta(repo, "fetch")
    assert sha256_file(object_path(repo, victim)) == victim
    assert not object_path(repo, victim).is_symlink()
    git_env.theta(repo, "fsck")
    git_env.git(repo, "checkout", "--", MODEL)
    assert sha256_file(repo / MODEL) == digest
    assert_status_clean(git_env, repo)
