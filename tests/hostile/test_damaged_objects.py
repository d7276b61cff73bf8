"""Objects whose bytes no longer hash to their id, on every path that reads them.

A damaged object keeps its size and header (one payload byte flipped), so
only its sha256 tells. No reader may hand out such bytes or build on them:
``load_state_dict``, ``restore``, ``history``/``best``, ``git theta-diff`` and
``theta-log``, and the merge driver all refuse it, naming the object; no
statistics computed from it are cached, so once it is repaired the numbers are
right again; and adding the file again replaces the damaged object with the
good bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import GitEnv
from helpers import (
    assert_status_clean,
    copy_repo,
    enter_git_env,
    isolated_git_env,
    object_path,
    read_manifest,
    save,
    sha256_file,
    tensor_bytes,
    tracked_repo,
)

import git_theta_filter as gtf
from git_theta_filter.errors import ThetaError
from git_theta_filter.store.integrity import VERIFIED, ObjectCorruptError

MODEL = "model.pth"


def checkpoint(epoch: int) -> dict:
    generator = torch.Generator().manual_seed(epoch)
    return {
        "model": {
            "fc1.weight": torch.randn(32, 24, generator=generator),
            "fc1.bias": torch.randn(32, generator=generator),
            "fc2.weight": torch.randn(8, 32, generator=generator),
        },
        "epoch": epoch,
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[GitEnv, Path, dict]:
    """Two commits of a model (epoch 1, then epoch 2 with fc1 changed) and their metrics."""
    root = tmp_path_factory.mktemp("damaged-objects")
    git_env = isolated_git_env(root / "home")
    repo = tracked_repo(git_env, root / "repo")
    first = checkpoint(1)
    second = {"model": dict(first["model"]), "epoch": 2}
    second["model"]["fc1.weight"] = first["model"]["fc1.weight"] + 0.5
    digests = {}
    for state in (first, second):
        digests[state["epoch"]] = save(state, repo / MODEL)
        (repo / f"{MODEL}.metrics.json").write_text(json.dumps({"loss": 1 / state["epoch"]}))
        git_env.git(repo, "add", MODEL, f"{MODEL}.metrics.json")
        git_env.git(repo, "commit", "-qm", f"epoch {state['epoch']}")
    return git_env, repo, {"states": (first, second), "digests": digests}


@pytest.fixture
def copy(template: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """A private copy of the template, with this process's environment set to its HOME
    (for the Python API) and nothing remembered as verified from an earlier test.
    """
    git_env, repo, data = template
    enter_git_env(monkeypatch, git_env.env)
    VERIFIED.clear()
    return git_env, copy_repo(repo, tmp_path / "repo"), data


def damage(repo: Path, oid: str, keep_mtime: bool = False) -> bytes:
    """Flip the last payload byte: same size, same header; returns the good bytes.

    With ``keep_mtime``, the file's modification time is set back afterwards.
    """
    path = object_path(repo, oid)
    before = path.stat()
    good = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 0x01]))
    path.chmod(0o444)
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return good


def repair(repo: Path, oid: str, good: bytes) -> None:
    path = object_path(repo, oid)
    path.chmod(0o644)
    path.write_bytes(good)
    path.chmod(0o444)


def oid_of(git_env: GitEnv, repo: Path, rev: str, tensor: str) -> str:
    return {t.name: t.oid for t in read_manifest(git_env, repo, f"{rev}:{MODEL}").tensors}[tensor]


def assert_names_the_object(error: BaseException, oid: str) -> None:
    assert isinstance(error, ObjectCorruptError), repr(error)
    assert error.oid == oid and f"object {oid} is corrupt: content hashes to" in str(error)


def test_load_state_dict_refuses_a_damaged_object(copy: tuple) -> None:
    git_env, repo, data = copy
    oid = oid_of(git_env, repo, "HEAD~1", "model.fc2.weight")
    good = damage(repo, oid)
    api = gtf.open(repo)
    with pytest.raises(ObjectCorruptError) as error:
        api.load_state_dict(MODEL, rev="HEAD~1", prefix="model.")
    assert_names_the_object(error.value, oid)
    # Repaired, it loads; and what was checked is remembered only until the file changes:
    # damaged again, even with its mtime set back, it is refused again.
    repair(repo, oid, good)
    state = api.load_state_dict(MODEL, rev="HEAD~1", prefix="model.")
    want = data["states"][0]["model"]["fc2.weight"]
    assert tensor_bytes(state["fc2.weight"]) == tensor_bytes(want)
    damage(repo, oid, keep_mtime=True)
    with pytest.raises(ObjectCorruptError):
        api.load_state_dict(MODEL, rev="HEAD~1", prefix="model.")


def test_restore_refuses_a_damaged_object_and_leaves_the_file(copy: tuple) -> None:
    git_env, repo, data = copy
    damage(repo, oid_of(git_env, repo, "HEAD~1", "model.fc1.weight"))
    with pytest.raises(ThetaError, match="corrupt"):
        gtf.open(repo).restore(MODEL, rev="HEAD~1")
    assert sha256_file(repo / MODEL) == data["digests"][2]
    assert_status_clean(git_env, repo)


def theta_diff(git_env: GitEnv, repo: Path) -> tuple[int, str, dict | None]:
    result = git_env.theta(repo, "diff", "--json", "HEAD~1", "HEAD", check=False)
    output = json.loads(result.stdout) if result.returncode == 0 else None
    return result.returncode, result.stderr.decode(), output


def test_theta_diff_and_log_refuse_a_damaged_object_and_cache_nothing_from_it(
    copy: tuple, tmp_path: Path
) -> None:
    git_env, repo, _data = copy
    pristine = copy_repo(repo, tmp_path / "pristine")
    oid = oid_of(git_env, repo, "HEAD", "model.fc1.weight")
    good = damage(repo, oid)
    code, stderr, _ = theta_diff(git_env, repo)
    assert code == 1 and f"object {oid} is corrupt: content hashes to" in stderr, stderr
    log = git_env.run("git", "theta-log", "--json", cwd=repo, check=False)
    assert log.returncode == 1 and oid in log.stderr.decode()
    repair(repo, oid, good)
    # Nothing computed from the damaged bytes was kept: the numbers are those of a clean copy.
    assert theta_diff(git_env, repo)[2] == theta_diff(git_env, pristine)[2]


def test_history_and_best_refuse_a_damaged_object(copy: tuple) -> None:
    git_env, repo, _data = copy
    oid = oid_of(git_env, repo, "HEAD", "model.fc1.weight")
    damage(repo, oid)
    api = gtf.open(repo)
    with pytest.raises(ObjectCorruptError) as error:
        api.history(MODEL)
    assert_names_the_object(error.value, oid)
    with pytest.raises(ObjectCorruptError):
        api.best(MODEL, metric="loss")


def test_merge_driver_never_writes_a_manifest_for_bytes_it_did_not_verify(copy: tuple) -> None:
    """Ours changed fc2, theirs fc1.bias: the merged file takes ours' fc2 object, which is
    damaged. Merging it as it is would commit a manifest whose sha256 vouches for the damaged
    bytes (clean compares each payload with its object, and they agree).
    """
    git_env, repo, data = copy
    git_env.git(repo, "config", "theta.merge.strategy", "average")
    second = data["states"][1]
    git_env.git(repo, "checkout", "-q", "-b", "theirs")
    theirs = {"model": dict(second["model"]), "epoch": 2}
    theirs["model"]["fc1.bias"] = second["model"]["fc1.bias"] * 2
    save(theirs, repo / MODEL)
    git_env.git(repo, "commit", "-qam", "theirs")
    git_env.git(repo, "checkout", "-q", "main")
    ours = {"model": dict(second["model"]), "epoch": 2}
    ours["model"]["fc2.weight"] = second["model"]["fc2.weight"] - 1
    save(ours, repo / MODEL)
    git_env.git(repo, "commit", "-qam", "ours")
    # An index entry as new as the index is racily clean: git would clean the file again
    # before merging, and that clean repairs the damaged object (see the re-add test below).
    # An older file time and a refreshed index take that clean out of the merge.
    past = os.stat(repo / MODEL).st_mtime - 10
    os.utime(repo / MODEL, (past, past))
    git_env.git(repo, "status", "--porcelain")
    oid = oid_of(git_env, repo, "HEAD", "model.fc2.weight")
    good = damage(repo, oid)
    result = git_env.run("git", "merge", "-q", "--no-edit", "theirs", cwd=repo, check=False)
    assert result.returncode != 0, "merged on top of a damaged object"
    assert f"object {oid} is corrupt" in result.stderr.decode(), result.stderr.decode()
    # Repaired, the same merge goes through and gives both changes.
    repair(repo, oid, good)
    git_env.git(repo, "merge", "--abort")
    git_env.git(repo, "merge", "-q", "--no-edit", "theirs")
    merged = torch.load(repo / MODEL, weights_only=True)["model"]
    assert torch.equal(merged["fc2.weight"], ours["model"]["fc2.weight"])
    assert torch.equal(merged["fc1.bias"], theirs["model"]["fc1.bias"])


@pytest.mark.parametrize("how", ["git-add", "commit-checkpoint"])
def test_a_re_add_over_a_damaged_object_replaces_it_with_the_good_bytes(
    copy: tuple, how: str
) -> None:
    """The same tensors added again: after the add succeeds, the store can give the file back.
    ``git add`` of a small file cleans without the staged version; the API compares with it.
    """
    git_env, repo, data = copy
    names = ("model.fc1.weight", "model.fc2.weight")
    victims = [oid_of(git_env, repo, "HEAD", name) for name in names]
    for oid in victims:
        damage(repo, oid)
    # The same tensors in a new file (another epoch number, so another data.pkl).
    again = {"model": data["states"][1]["model"], "epoch": 3}
    if how == "git-add":
        save(again, repo / MODEL)
        git_env.git(repo, "add", MODEL)
        git_env.git(repo, "commit", "-qm", "epoch 3")
    else:
        gtf.open(repo).commit_checkpoint(again, MODEL, message="epoch 3")
    digest = sha256_file(repo / MODEL)
    for oid in victims:
        assert sha256_file(object_path(repo, oid)) == oid
        assert (repo / ".git" / "theta" / "bad" / oid).is_file()  # kept for inspection
    git_env.theta(repo, "fsck")
    (repo / MODEL).unlink()
    git_env.git(repo, "checkout", "--", MODEL)
    assert sha256_file(repo / MODEL) == digest
    assert_status_clean(git_env, repo)
