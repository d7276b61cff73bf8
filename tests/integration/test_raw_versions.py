"""Reading versions theta never cleaned: raw files and git-lfs pointers in history.

After ``git theta track`` (and a commit through theta), theta-log, theta-diff,
the Python API and checkout read the older versions without a migration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from adoption_history import EPOCHS, Adopted, adopted_history, checkpoint_at, sha256
from conftest import GitEnv
from helpers import local_store

from git_theta_filter.manifest import Manifest


@pytest.fixture
def raw(tmp_path_factory: pytest.TempPathFactory) -> Adopted:
    """The raw history, with '*.pth' tracked and the current model committed through theta."""
    history = adopted_history(tmp_path_factory, "raw")
    history.theta("track", "--renormalize", "*.pth")
    history.git("commit", "-qm", "Store models with git-theta")
    return history


@pytest.fixture
def lfs(tmp_path_factory: pytest.TempPathFactory) -> Adopted:
    """The git-lfs history, switched to theta with --replace-lfs and committed."""
    history = adopted_history(tmp_path_factory, "lfs")
    history.theta("track", "--replace-lfs", "--renormalize", "*.pth")
    history.git("commit", "-qm", "Store models with git-theta")
    return history


def _lfs_object(history: Adopted, epoch: int) -> Path:
    oid = history.files[epoch]["model.pth"]
    return history.repo / ".git" / "lfs" / "objects" / oid[0:2] / oid[2:4] / oid


def _log_json(history: Adopted, *args: str) -> list[dict]:
    code, out, err = history.theta("log", "--json", *args)
    assert code == 0, err
    return json.loads(out)["entries"]


@pytest.mark.parametrize("kind", ["raw", "lfs"])
def test_theta_log_shows_versions_from_before_theta(kind: str, request: pytest.FixtureRequest):
    history: Adopted = request.getfixturevalue(kind)
    entries = _log_json(history)
    # The theta commit stores the same file as epoch 10: 0 tensors changed.
    assert [e["metrics"]["epoch"] for e in entries] == [10, *reversed(EPOCHS)]
    assert entries[0]["tensors_changed"] == 0 and entries[0]["status"] == "modified"
    assert [e["tensors_changed"] for e in entries[1:]] == [1] * 9 + [10]
    assert all(e["norms_available"] for e in entries)
    assert entries[-1]["metrics"]["metrics.loss"] == 1.0


def test_theta_diff_across_the_adoption_boundary_compares_tensors(raw: Adopted) -> None:
    """HEAD~2 is raw, HEAD a manifest: tensors are compared, not added and removed."""
    code, out, err = raw.theta("diff", "--json", "HEAD~2", "HEAD")
    assert code == 0, err
    (file,) = json.loads(out)["files"]
    assert file["path"] == "model.pth" and file["status"] == "modified"
    statuses = {t["name"]: t["status"] for t in file["tensors"]}
    assert statuses == {"model.layer0.weight": "modified"}, statuses


def test_theta_diff_between_two_raw_versions(raw: Adopted) -> None:
    code, out, err = raw.theta("diff", "--json", raw.commits[3], raw.commits[4])
    assert code == 0, err
    (file,) = json.loads(out)["files"]
    assert [t["name"] for t in file["tensors"] if t["status"] == "modified"] == [
        "model.layer4.weight"
    ]


@pytest.mark.parametrize("kind", ["raw", "lfs"])
def test_load_state_dict_of_a_version_from_before_theta(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    import git_theta_filter as gtf

    history: Adopted = request.getfixturevalue(kind)
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in history.git_env.env.items():
        monkeypatch.setenv(key, value)
    state = gtf.open(history.repo).load_state_dict(
        "model.pth", rev=history.commits[4], prefix="model."
    )
    expected = checkpoint_at(4)["model"]
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[name], tensor) for name, tensor in expected.items())


def test_checkout_of_an_lfs_era_version_gives_the_real_file(lfs: Adopted) -> None:
    lfs.git("checkout", lfs.commits[2], "--", "model.pth")
    assert sha256(lfs.repo / "model.pth") == lfs.files[2]["model.pth"]


@pytest.mark.parametrize("kind", ["raw", "lfs"])
def test_show_writes_a_version_from_before_theta(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    history: Adopted = request.getfixturevalue(kind)
    out = tmp_path / "epoch3.pth"
    history.theta("show", f"{history.commits[3]}:model.pth", "-o", str(out))
    assert sha256(out) == history.files[3]["model.pth"]


def test_checkout_of_an_lfs_era_version_without_its_object_fails_clearly(lfs: Adopted) -> None:
    _lfs_object(lfs, 2).unlink()
    result = lfs.git_env.run(
        "git", "checkout", lfs.commits[2], "--", "model.pth", cwd=lfs.repo, check=False
    )
    assert result.returncode != 0
    err = result.stderr.decode()
    assert f"sha256:{lfs.files[2]['model.pth']} is not in .git/lfs/objects" in err, err
    assert "git lfs fetch --all" in err
    model = lfs.repo / "model.pth"
    # Never the pointer text written as the model.
    assert not model.exists() or not model.read_bytes().startswith(b"version https://git-lfs")


def test_checkout_of_an_lfs_era_version_with_a_corrupt_object_fails(lfs: Adopted) -> None:
    target = _lfs_object(lfs, 2)
    data = bytearray(target.read_bytes())
    data[1000] ^= 0x40
    target.chmod(0o644)
    target.write_bytes(bytes(data))
    result = lfs.git_env.run(
        "git", "checkout", lfs.commits[2], "--", "model.pth", cwd=lfs.repo, check=False
    )
    assert result.returncode != 0
    assert "is corrupt (content hashes to" in result.stderr.decode()


def test_theta_log_names_the_missing_lfs_object_and_the_fix(lfs: Adopted) -> None:
    _lfs_object(lfs, 5).unlink()
    code, _out, err = lfs.theta("log", check=False)
    assert code == 1
    assert f"model.pth at {lfs.commits[5][:7]} is a git-lfs pointer" in err
    assert "run `git lfs fetch --all`" in err


def test_raw_versions_at_untracked_paths_are_not_models(raw: Adopted) -> None:
    """Only paths that .gitattributes routes through theta are read as model versions."""
    raw.theta("untrack", "*.pth")
    raw.theta("track", "other/*.pth")
    entries = _log_json(raw)
    assert [e["metrics"]["epoch"] for e in entries] == [10]  # the one manifest
    assert not (raw.repo / ".git" / "theta" / "converted").exists()


def test_a_damaged_manifest_is_not_read_as_a_raw_file(raw: Adopted) -> None:
    blob = raw.git("cat-file", "blob", "HEAD:model.pth")
    (raw.repo / "model.pth").write_text(blob.replace("format torch-zip", "format bogus"))
    raw.git("-c", "filter.theta.process=", "-c", "filter.theta.required=false", "add", "model.pth")
    raw.git("commit", "-qm", "damaged")
    (entry,) = _log_json(raw, "-n", "1")
    assert entry["status"] == "removed"  # the damaged blob is no version of the model


def test_converted_versions_are_cached_by_blob(raw: Adopted) -> None:
    _log_json(raw)
    cached = sorted(p.name for p in (raw.repo / ".git" / "theta" / "converted").iterdir())
    blobs = sorted(raw.git("rev-parse", f"{c}:model.pth").strip() for c in raw.commits.values())
    assert cached == blobs
    for name in cached:
        manifest = Manifest.parse((raw.repo / ".git" / "theta" / "converted" / name).read_bytes())
        assert manifest.format == "torch-zip"
    needed = {
        oid
        for name in cached
        for oid in Manifest.parse(
            (raw.repo / ".git" / "theta" / "converted" / name).read_bytes()
        ).object_ids()
    }
    # gc deletes the objects only the raw versions need; the next read converts them again.
    raw.theta("gc", "--prune=now")
    assert not all(local_store(raw.repo).has(o) for o in needed)
    assert [e["metrics"]["epoch"] for e in _log_json(raw)][-1] == 1
    assert all(local_store(raw.repo).has(o) for o in needed)


def test_theta_diff_reads_a_raw_safetensors_version(git_env: GitEnv, tmp_path: Path) -> None:
    """A safetensors file committed raw is read with the same reader as clean uses."""
    from safetensors.torch import save_file

    repo = tmp_path / "repo"
    git_env.run("git", "init", "-q", str(repo))
    tensors = {"a": torch.zeros(4, 4), "b": torch.ones(8)}
    save_file(tensors, str(repo / "model.safetensors"))
    git_env.git(repo, "add", "model.safetensors")
    git_env.git(repo, "commit", "-qm", "raw")
    git_env.theta(repo, "track", "*.safetensors")
    save_file({**tensors, "b": torch.full((8,), 2.0)}, str(repo / "model.safetensors"))
    git_env.git(repo, "add", ".gitattributes", "model.safetensors")
    git_env.git(repo, "commit", "-qm", "through theta")
    out = git_env.theta(repo, "diff", "--json", "HEAD~1", "HEAD").stdout
    (file,) = json.loads(out)["files"]
    assert {t["name"]: t["status"] for t in file["tensors"]} == {"b": "modified"}
