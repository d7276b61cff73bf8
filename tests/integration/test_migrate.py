"""`git theta migrate info|import|export` on histories from before theta (git, git-lfs 3.3)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from adoption_history import EPOCHS, Adopted, adopted_history, git_dir_bytes, sha256
from helpers import object_path

from git_theta_filter.errors import ThetaError
from git_theta_filter.gitrepo import GitRepo
from git_theta_filter.lfs_pointer import parse_lfs_pointer
from git_theta_filter.manifest import Manifest
from git_theta_filter.migrate import _BlobWriter

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def raw(tmp_path_factory: pytest.TempPathFactory) -> Adopted:
    return adopted_history(tmp_path_factory, "raw")


@pytest.fixture
def lfs(tmp_path_factory: pytest.TempPathFactory) -> Adopted:
    return adopted_history(tmp_path_factory, "lfs")


def _commits(history: Adopted) -> list[str]:
    return history.git("rev-list", "--reverse", "main").split()


def _log(history: Adopted) -> list[str]:
    """Author, dates and message of every commit, oldest first."""
    return history.git("log", "--reverse", "--format=%an|%ae|%ad|%cn|%cd|%B%x00", "main").split(
        "\0"
    )


def _assert_every_version_byte_exact(history: Adopted, scratch: Path) -> None:
    """Check out each rewritten commit in turn; every file matches the original, status is clean."""
    where = scratch / "checkout"
    history.git("worktree", "add", "-q", "--detach", str(where), "main")
    for epoch, commit in zip(EPOCHS, _commits(history), strict=True):
        history.git("checkout", "-q", "--detach", commit, cwd=where)
        for name, digest in history.files[epoch].items():
            assert sha256(where / name) == digest, f"{name} at epoch {epoch} differs"
    status = history.git("status", "--porcelain", cwd=where)
    assert status == "", f"status not clean after the checkouts:\n{status}"
    history.git("worktree", "remove", "--force", str(where))


def _assert_theta_history(history: Adopted) -> None:
    """Every model.pth is a manifest, .gitattributes tracks it, notes.txt is untouched."""
    for epoch, commit in zip(EPOCHS, _commits(history), strict=True):
        manifest = Manifest.parse(history.git("cat-file", "blob", f"{commit}:model.pth").encode())
        assert manifest.sha256 == history.files[epoch]["model.pth"]
        attributes = history.git("show", f"{commit}:.gitattributes")
        assert "*.pth filter=theta diff=theta merge=theta -text" in attributes.splitlines()
        assert "filter=lfs" not in attributes
        assert history.git("show", f"{commit}:notes.txt") == f"notes of epoch {epoch}\n"


def _assert_log_has_every_version(history: Adopted) -> None:
    code, out, err = history.theta("log", "--json")
    import json

    entries = json.loads(out)["entries"]
    assert [e["metrics"]["epoch"] for e in entries] == list(reversed(EPOCHS)), err
    assert [e["metrics"]["metrics.loss"] for e in entries] == [
        round(1.0 / epoch, 6) for epoch in reversed(EPOCHS)
    ]
    assert all(e["norms_available"] for e in entries)
    # One tensor in ten changes per commit; the first version adds all ten.
    assert [e["tensors_changed"] for e in entries] == [1] * 9 + [10]


def _reclaim(history: Adopted) -> None:
    """docs/migrate.md's clean-up after a migration."""
    history.git("reflog", "expire", "--expire=now", "--all")
    history.git("gc", "-q", "--prune=now")
    history.theta("gc", "--prune=now")


def test_migrate_import_raw_history_everything(raw: Adopted, tmp_path: Path) -> None:
    before_bytes = git_dir_bytes(raw.repo)
    before_log = _log(raw)
    old_commits = _commits(raw)
    code, out, err = raw.theta("migrate", "import", "--include=*.pth", "--everything")
    assert code == 0, err
    new_commits = _commits(raw)
    # The old -> new map, oldest first, on stdout.
    assert out.splitlines() == [f"{o} {n}" for o, n in zip(old_commits, new_commits, strict=True)]
    assert set(old_commits).isdisjoint(new_commits)
    assert _log(raw) == before_log  # authors, dates and messages as they were
    assert raw.git("status", "--porcelain") == ""
    _assert_theta_history(raw)
    _assert_log_has_every_version(raw)
    _reclaim(raw)
    after_bytes = git_dir_bytes(raw.repo)
    assert after_bytes <= 0.3 * before_bytes, (before_bytes, after_bytes)
    _assert_every_version_byte_exact(raw, tmp_path)


def test_migrate_export_to_raw_gives_back_the_same_commits(raw: Adopted) -> None:
    original = _commits(raw)
    raw.theta("migrate", "import", "--include=*.pth")
    code, out, err = raw.theta("migrate", "export", "--to=raw", "--include=*.pth")
    assert code == 0, err
    assert _commits(raw) == original  # same trees, same metadata: the same commit ids
    assert raw.git("status", "--porcelain") == ""
    assert not (raw.repo / ".gitattributes").exists()
    assert sha256(raw.repo / "model.pth") == raw.files[10]["model.pth"]


def test_migrate_import_lfs_history_everything(lfs: Adopted, tmp_path: Path) -> None:
    before_bytes = git_dir_bytes(lfs.repo)
    before_log = _log(lfs)
    code, out, err = lfs.theta("migrate", "import", "--everything")  # patterns from .gitattributes
    assert code == 0, err
    assert len(out.splitlines()) == len(EPOCHS)
    assert _log(lfs) == before_log
    assert lfs.git("status", "--porcelain") == ""
    _assert_theta_history(lfs)
    _assert_log_has_every_version(lfs)
    # docs/migrate.md: replace the remote's history, then drop what nothing needs.
    lfs.git("push", "-q", "--force", "origin", "main")
    _reclaim(lfs)
    lfs.git("lfs", "prune")
    after_bytes = git_dir_bytes(lfs.repo)
    assert after_bytes <= 0.3 * before_bytes, (before_bytes, after_bytes)
    _assert_every_version_byte_exact(lfs, tmp_path)


def test_migrate_export_to_lfs_round_trips(lfs: Adopted, tmp_path: Path) -> None:
    original = _commits(lfs)
    lfs.theta("migrate", "import", "--everything")
    # The git-lfs objects go away, as after a clean-up: export must write them again.
    for path in (lfs.repo / ".git" / "lfs" / "objects").rglob("*"):
        if path.is_file():
            path.unlink()
    code, out, err = lfs.theta("migrate", "export", "--to=lfs", "--everything")
    assert code == 0, err
    assert _commits(lfs) == original  # the very commits git-lfs made
    assert lfs.git("status", "--porcelain") == ""
    for epoch, commit in zip(EPOCHS, original, strict=True):
        pointer = parse_lfs_pointer(lfs.git("cat-file", "blob", f"{commit}:model.pth").encode())
        assert pointer is not None and pointer.oid == lfs.files[epoch]["model.pth"]
    _assert_every_version_byte_exact(lfs, tmp_path)


def test_migrate_import_refuses_a_dirty_work_tree(raw: Adopted) -> None:
    original = _commits(raw)
    (raw.repo / "notes.txt").write_text("edited\n")
    code, out, err = raw.theta("migrate", "import", "--include=*.pth", check=False)
    assert code == 1
    assert "uncommitted changes (notes.txt)" in err and "git stash" in err
    assert _commits(raw) == original and out == ""


def test_migrate_import_in_a_clone_lacking_lfs_objects_says_fetch_all(
    lfs: Adopted, tmp_path: Path
) -> None:
    clone = tmp_path / "clone"
    lfs.git("clone", "-q", str(lfs.origin), str(clone), cwd=tmp_path)
    history = Adopted(lfs.git_env, clone, lfs.commits, lfs.files)
    original = _commits(history)
    code, out, err = history.theta("migrate", "import", "--everything", check=False)
    assert code == 1
    # A clone has the checked-out version's object only.
    assert f"{len(EPOCHS) - 1} git-lfs object(s)" in err and "nothing was rewritten" in err
    assert "git lfs fetch --all" in err
    assert _commits(history) == original
    history.git("lfs", "fetch", "--all")
    code, out, err = history.theta("migrate", "import", "--everything")
    assert code == 0, err
    _assert_every_version_byte_exact(history, tmp_path)


def test_migrate_import_refuses_a_corrupt_lfs_object(lfs: Adopted) -> None:
    original = _commits(lfs)
    oid = lfs.files[3]["model.pth"]
    target = lfs.repo / ".git" / "lfs" / "objects" / oid[0:2] / oid[2:4] / oid
    data = bytearray(target.read_bytes())
    data[-100] ^= 1
    target.chmod(0o644)
    target.write_bytes(bytes(data))
    code, _out, err = lfs.theta("migrate", "import", "--everything", check=False)
    assert code == 1
    assert f"git-lfs object sha256:{oid}" in err and "is corrupt" in err
    assert _commits(lfs) == original


def test_migrate_export_refuses_missing_theta_objects(raw: Adopted) -> None:
    raw.theta("migrate", "import", "--include=*.pth")
    imported = _commits(raw)
    manifest = Manifest.parse(raw.git("cat-file", "blob", "HEAD~4:model.pth").encode())
    oid = manifest.skeleton  # no other version has the same data.pkl
    object_path(raw.repo, oid).unlink()
    code, _out, err = raw.theta("migrate", "export", "--to=raw", "--include=*.pth", check=False)
    assert code == 1
    assert "not in the local store" in err and "git theta fetch --all" in err
    assert _commits(raw) == imported


def _info_row(output: str, pattern: str) -> list[str]:
    """The cells of a pattern's row of `migrate info` (columns are 2+ spaces apart)."""
    import re

    line = next(line for line in output.splitlines() if line.startswith(pattern))
    return re.split(r"\s{2,}", line.strip())


def test_migrate_info_counts_versions_and_estimates_storage(raw: Adopted, lfs: Adopted) -> None:
    code, out, err = raw.theta("migrate", "info")
    assert code == 0, err
    assert out.splitlines()[0] == "10 commits of refs/heads/main"
    file_bytes = (raw.repo / "model.pth").stat().st_size
    pattern, in_raw, in_lfs, in_theta, estimate = _info_row(out, "*.pth")
    assert in_raw == f"10 ({file_bytes * 10 / 1e6:.1f} MB)"
    assert (in_lfs, in_theta) == ("0 (0 B)", "0 (0 B)")
    number, unit = estimate.split()
    # Ten tensors, then one new tensor per version: about 1.9 files' worth, not 10.
    assert 1.8 * file_bytes < float(number) * {"KB": 1e3, "MB": 1e6}[unit] < 2.2 * file_bytes
    assert not list((raw.repo / ".git" / "theta").glob("objects/*/*/*"))  # info stores nothing

    code, out, err = lfs.theta("migrate", "info")
    assert code == 0, err
    assert _info_row(out, "*.pth")[1:4] == [
        "0 (0 B)",
        f"10 ({file_bytes * 10 / 1e6:.1f} MB)",
        "0 (0 B)",
    ]


def test_migrate_import_keeps_other_refs_and_rewrites_tags(raw: Adopted) -> None:
    raw.git("tag", "-a", "v5", "-m", "release 5", raw.commits[5])
    raw.git("branch", "old", raw.commits[7])
    code, _out, err = raw.theta("migrate", "import", "--include=*.pth", "main")
    assert code == 0, err
    # Only main was named: the branch and the tag keep the old commits.
    assert raw.git("rev-parse", "old").strip() == raw.commits[7]
    assert raw.git("rev-parse", "v5^{commit}").strip() == raw.commits[5]
    code, _out, err = raw.theta("migrate", "import", "--include=*.pth", "--everything")
    assert code == 0, err
    for ref in ("old", "v5^{commit}"):
        blob = raw.git("cat-file", "blob", f"{ref}:model.pth", check=True)
        assert blob.startswith("git-theta-manifest ")
    assert raw.git("cat-file", "-t", "v5").strip() == "tag"
    assert raw.git("tag", "-l", "--format=%(contents)", "v5").strip() == "release 5"


def test_migrate_import_needs_patterns(raw: Adopted) -> None:
    code, _out, err = raw.theta("migrate", "import", check=False)
    assert code == 2
    assert "--include='*.pth'" in err


@pytest.mark.parametrize(
    ("command", "key", "fix"),
    [
        (["import", "--include=*.pth"], "filter.theta.process", "git theta install"),
        (["export", "--to=lfs", "--include=*.pth"], "filter.lfs.process", "git lfs install"),
    ],
)
def test_migrate_refuses_when_the_filter_to_check_out_through_is_missing(
    raw: Adopted, command: list[str], key: str, fix: str
) -> None:
    original = _commits(raw)
    unset = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": key, "GIT_CONFIG_VALUE_0": ""}
    result = raw.git_env.run(
        "git", "theta", "migrate", *command, cwd=raw.repo, env=unset, check=False
    )
    assert result.returncode == 1
    assert f"run `{fix}`" in result.stderr.decode()
    assert _commits(raw) == original


def test_migrate_import_on_a_detached_head_asks_for_refs(raw: Adopted) -> None:
    raw.git("checkout", "-q", "--detach", "HEAD~1")
    code, _out, err = raw.theta("migrate", "import", "--include=*.pth", check=False)
    assert code == 128
    assert "--everything" in err


def test_migrate_rewrites_refs_only(raw: Adopted) -> None:
    code, _out, err = raw.theta("migrate", "import", "--include=*.pth", "HEAD~1", check=False)
    assert code == 128
    assert "'HEAD~1' is not a branch or tag" in err


def test_export_fails_when_git_cannot_write_a_blob_instead_of_recording_none(
    git_env, tmp_path: Path
) -> None:
    # A file where the blob's loose-object directory belongs makes `git hash-object -w`
    # die mid-stream; an empty answer must not become the blob id of a rewritten commit.
    path = tmp_path / "plain"
    git_env.run("git", "init", "-q", str(path))
    blob_id = hashlib.sha1(b"blob 5\0hello").hexdigest()
    (path / ".git" / "objects" / blob_id[:2]).write_bytes(b"")
    with _BlobWriter(GitRepo.discover(path)) as writer:
        with pytest.raises(ThetaError, match="`git hash-object` failed to write a blob"):
            writer.write(lambda write: write(memoryview(b"hello")))
