"""The Python API (git_theta_filter.api,
as ``import git_theta_filter as gtf``) against real repositories.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import GitEnv
from helpers import copy_repo, enter_git_env, sha256_file, tensor_bytes
from safetensors.torch import save_file

import git_theta_filter as gtf
from git_theta_filter.gitrepo import NotARepositoryError


@pytest.fixture
def api_repo(git_env: GitEnv, repo: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``repo``, with this process's environment set to the isolated one,
    so the API's git commands use it.
    """
    enter_git_env(monkeypatch, git_env.env)
    return repo


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def filter_runs(repo: Path, *args: str) -> int:
    """How many filter processes git starts for this command
    (none when the index's stat data is trusted).
    """
    trace = repo.parent / "trace.txt"
    trace.unlink(missing_ok=True)
    git(repo, *args, env={"GIT_TRACE": str(trace)})
    # By name, or by the script's path when another git-theta (a shim) is on PATH.
    return sum(
        "run_command:" in line and line.endswith("git-theta filter-process")
        for line in trace.read_text().splitlines()
    )


def nested_checkpoint(epoch: int) -> dict:
    generator = torch.Generator().manual_seed(epoch)
    weight = torch.randn(6, 4, generator=generator)
    table = torch.randn(10, 3, generator=generator).to(torch.bfloat16)
    return {
        "model": {
            "encoder.weight": weight,
            "decoder.weight": weight,  # tied
            "table": table,
            "table_head": table[:4],  # a view of the table's storage
            "steps": torch.tensor(epoch * 100),  # 0-d int64
            "mask": torch.arange(5) % 2 == 0,
        },
        "epoch": epoch,
    }


def test_api_open_finds_the_repository_and_checks_the_filter(
    api_repo: Path, git_env: GitEnv
) -> None:
    (api_repo / "sub").mkdir()
    repo = gtf.open(api_repo / "sub")
    assert repo.path == api_repo
    git_env.theta(api_repo, "uninstall", "--global")
    with pytest.raises(gtf.FilterNotInstalledError) as error:
        gtf.open(api_repo)
    assert error.value.hint == "run `git theta install`"


def test_api_open_outside_a_repository_names_the_absolute_path(
    api_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    monkeypatch.chdir(outside)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    with pytest.raises(NotARepositoryError) as error:
        gtf.open(".")
    assert str(error.value) == f"not a git repository: {outside}"
    assert error.value.exit_code == 128


def test_api_import_is_cheap_until_the_api_is_used() -> None:
    code = (
        "import sys, git_theta_filter as gtf\n"
        "assert not {'torch', 'numpy', 'git_theta_filter.api'} & set(sys.modules), "
        "sys.modules.keys()\n"
        "gtf.open\n"
        "assert 'git_theta_filter.api' in sys.modules and 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_api_commit_checkpoint_makes_the_commit_that_git_add_and_git_commit_make(
    api_repo: Path, tmp_path: Path
) -> None:
    twin = copy_repo(api_repo, tmp_path / "twin")
    checkpoint = nested_checkpoint(1)
    metrics = {"loss": 0.25, "val": {"acc": torch.tensor(0.75)}}
    commit = gtf.open(api_repo).commit_checkpoint(
        checkpoint, "model.pth", message="epoch 1", metrics=metrics
    )

    torch.save(checkpoint, twin / "model.pth")
    (twin / "model.pth.metrics.json").write_bytes(
        (api_repo / "model.pth.metrics.json").read_bytes()
    )
    git(twin, "add", "model.pth", "model.pth.metrics.json")
    git(twin, "commit", "-q", "-m", "epoch 1")
    # Same bytes, same tree, same dates: the very same commit.
    assert sha256_file(api_repo / "model.pth") == sha256_file(twin / "model.pth")
    assert (
        commit
        == git(twin, "rev-parse", "HEAD").strip()
        == git(api_repo, "rev-parse", "HEAD").strip()
    )
    assert json.loads((api_repo / "model.pth.metrics.json").read_text()) == {
        "loss": 0.25,
        "val": {"acc": 0.75},
    }

    # The index holds the file's stat data, so git trusts it without cleaning the file again.
    assert git(api_repo, "status", "--porcelain") == ""
    assert filter_runs(api_repo, "status", "--porcelain") == 0
    debug = git(api_repo, "ls-files", "--debug", "model.pth")
    stat = (api_repo / "model.pth").stat()
    assert f"size: {stat.st_size}" in debug
    assert f"mtime: {stat.st_mtime_ns // 10**9}:{stat.st_mtime_ns % 10**9}" in debug
    log = json.loads(git(api_repo, "theta-log", "--json"))["entries"]
    assert log[0]["metrics"]["val.acc"] == 0.75 and log[0]["metrics"]["epoch"] == 1


def test_api_commit_checkpoint_refuses_a_path_the_filter_does_not_track(api_repo: Path) -> None:
    with pytest.raises(gtf.NotTrackedError) as error:
        gtf.open(api_repo).commit_checkpoint({"w": torch.zeros(2)}, "weights.ckpt", message="x")
    assert error.value.hint == "run `git theta track '*.ckpt'`"
    assert git(api_repo, "rev-list", "--count", "HEAD").strip() == "1"


def test_api_load_state_dict_reads_objects_and_never_a_pickle(
    api_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = gtf.open(api_repo)
    for epoch in (1, 2, 3):
        repo.commit_checkpoint(nested_checkpoint(epoch), "model.pth", message=f"epoch {epoch}")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_state_dict unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    state = repo.load_state_dict("model.pth", rev="HEAD~2", prefix="model.")
    want = nested_checkpoint(1)["model"]
    assert sorted(state) == sorted(want)
    for name, tensor in want.items():
        assert state[name].dtype == tensor.dtype and state[name].shape == tensor.shape, name
        assert tensor_bytes(state[name]) == tensor_bytes(tensor), name
    # Tied weights come back equal but not sharing memory.
    assert state["encoder.weight"].data_ptr() != state["decoder.weight"].data_ptr()
    newest = repo.load_state_dict(api_repo / "model.pth")
    assert torch.equal(newest["model.steps"], torch.tensor(300))
    with pytest.raises(gtf.ModelNotFoundError):
        repo.load_state_dict("other.pth")


def test_api_history_best_and_restore(api_repo: Path, git_env: GitEnv) -> None:
    repo = gtf.open(api_repo)
    accuracies = {1: 0.6, 2: 0.9, 3: 0.8}
    commits, sha = {}, {}
    for epoch, accuracy in accuracies.items():
        commits[epoch] = repo.commit_checkpoint(
            nested_checkpoint(epoch),
            "model.pth",
            message=f"epoch {epoch}",
            metrics={"train": {"loss": 1.0 / epoch}, "val": {"acc": accuracy}},
        )
        sha[epoch] = sha256_file(api_repo / "model.pth")

    history = repo.history("model.pth")
    assert [entry.commit for entry in history] == [commits[3], commits[2], commits[1]]
    assert [entry.metrics["val.acc"] for entry in history] == [0.8, 0.9, 0.6]
    assert [entry.subject for entry in history] == ["epoch 3", "epoch 2", "epoch 1"]
    log = json.loads(git(api_repo, "theta-log", "--json"))["entries"]
    assert [entry.rel_change for entry in history] == [e["relative_change"] for e in log]
    assert history[-1].rel_change is None and history[0].rel_change > 0
    assert history[0].norm == pytest.approx(log[0]["norm"])

    best = repo.best("model.pth", metric="acc", mode="max")
    assert best.commit == commits[2] and best.metrics["val.acc"] == 0.9
    assert best.rel_change == history[1].rel_change
    assert (
        repo.best("model.pth", metric="loss").commit == commits[3]
    )  # losses are minimised by default
    with pytest.raises(ValueError, match="mode"):
        repo.best("model.pth", metric="acc", mode="highest")

    repo.restore("model.pth", rev=best.commit)
    assert sha256_file(api_repo / "model.pth") == sha[2]
    assert json.loads((api_repo / "model.pth.metrics.json").read_text())["val"]["acc"] == 0.9
    # Staged, as `git checkout <rev> -- <path>` leaves it, and trusted by stat.
    assert git(api_repo, "status", "--porcelain").splitlines() == [
        "M  model.pth",
        "M  model.pth.metrics.json",
    ]
    assert git(api_repo, "rev-parse", ":model.pth") == git(
        api_repo, "rev-parse", f"{commits[2]}:model.pth"
    )
    assert filter_runs(api_repo, "status", "--porcelain") == 0
    git_env.theta(api_repo, "fsck")


@pytest.mark.parametrize("name", ["-m.pth", "--help.pth", "sub/-rf.pth"])
def test_api_a_model_file_named_like_an_option_is_a_path_to_every_git_call(
    api_repo: Path, git_env: GitEnv, name: str
) -> None:
    # Without "--", `git check-attr filter -m.pth` exits 129 and `git add -m.pth.metrics.json`
    # takes it for options.
    repo = gtf.open(api_repo)
    first = repo.commit_checkpoint(
        nested_checkpoint(1), name, message="epoch 1", metrics={"loss": 0.5}
    )
    sha = sha256_file(api_repo / name)
    repo.commit_checkpoint(nested_checkpoint(2), name, message="epoch 2", metrics={"loss": 0.25})
    assert git(api_repo, "ls-files").split() == sorted(
        [".gitattributes", name, name + ".metrics.json"]
    )
    state = repo.load_state_dict(name, rev=first, prefix="model.")
    assert tensor_bytes(state["table"]) == tensor_bytes(nested_checkpoint(1)["model"]["table"])
    assert [entry.metrics["loss"] for entry in repo.history(name)] == [0.25, 0.5]
    assert repo.best(name, metric="loss").commit != first
    repo.restore(name, rev=first)
    assert sha256_file(api_repo / name) == sha
    assert json.loads((api_repo / (name + ".metrics.json")).read_text()) == {"loss": 0.5}
    git_env.theta(api_repo, "fsck")


def test_api_safetensors_commit_and_load(api_repo: Path) -> None:
    repo = gtf.open(api_repo)
    tensors = {"a": torch.randn(3, 2), "b": torch.arange(4, dtype=torch.int32)}
    repo.commit_checkpoint(tensors, "weights.safetensors", message="safetensors")
    expected = api_repo.parent / "expected.safetensors"
    save_file(tensors, str(expected))
    assert sha256_file(api_repo / "weights.safetensors") == sha256_file(expected)
    loaded = repo.load_state_dict("weights.safetensors")
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)
    assert git(api_repo, "status", "--porcelain") == ""


def test_api_restore_resolves_a_conflicted_model_file(api_repo: Path) -> None:
    repo = gtf.open(api_repo)
    repo.commit_checkpoint(nested_checkpoint(1), "model.pth", message="base")
    git(api_repo, "checkout", "-qb", "side")
    side = repo.commit_checkpoint(nested_checkpoint(2), "model.pth", message="side")
    side_sha = sha256_file(api_repo / "model.pth")
    git(api_repo, "checkout", "-q", "main")
    repo.commit_checkpoint(nested_checkpoint(3), "model.pth", message="main")
    merge = subprocess.run(["git", "merge", "side"], cwd=api_repo, capture_output=True)
    assert merge.returncode != 0 and git(api_repo, "ls-files", "-u", "model.pth")
    repo.restore("model.pth", rev="side")
    assert git(api_repo, "ls-files", "-u") == ""
    assert git(api_repo, "rev-parse", ":model.pth") == git(
        api_repo, "rev-parse", f"{side}:model.pth"
    )
    assert sha256_file(api_repo / "model.pth") == side_sha
    git(api_repo, "commit", "-q", "--no-edit")
    assert git(api_repo, "status", "--porcelain") == ""


def test_api_commit_files_makes_no_empty_commit(api_repo: Path) -> None:
    repo = gtf.open(api_repo)
    first = repo.commit_checkpoint(
        {"w": torch.ones(3)}, "model.pth", message="one", metrics={"a": 1}
    )
    again = repo.commit_files(["model.pth"], "the same again", metrics={"a": 1})
    assert again == first == git(api_repo, "rev-parse", "HEAD").strip()
    assert git(api_repo, "log", "--format=%s").splitlines()[0] == "one"


def test_api_a_metrics_file_rewritten_within_the_second_of_its_last_add_is_staged_anew(
    api_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API writes the index with libgit2 (staging.write_index_entry), whose racy
    check is by the nanosecond, while git's is by the second here. An index it writes
    in a later second must leave git a way to see a file rewritten, at the same size,
    in the second git last hashed it: this one's entry is smudged, so `git add` hashes
    it again instead of trusting its stat data."""
    import git_theta_filter.api as api

    real_clean_into_index = api.clean_into_index

    def in_the_next_second(*args: object) -> None:
        time.sleep(1.05 - time.time() % 1)
        real_clean_into_index(*args)

    repo = gtf.open(api_repo)
    for _attempt in range(5):
        time.sleep(1.02 - time.time() % 1)  # a second of its own for the first commit
        second = int(time.time())
        repo.commit_checkpoint({"w": torch.ones(3)}, "model.pth", "one", metrics={"acc": 0.1111})
        monkeypatch.setattr(api, "clean_into_index", in_the_next_second)
        # Rewritten at once: the same size, and usually the same second as its git add.
        repo.commit_checkpoint({"w": torch.zeros(3)}, "model.pth", "two", metrics={"acc": 0.2222})
        monkeypatch.setattr(api, "clean_into_index", real_clean_into_index)
        rewritten = os.stat(api_repo / "model.pth.metrics.json").st_mtime_ns // 10**9
        if rewritten == second:
            break
    else:
        pytest.skip("the machine was too slow to rewrite the file within one second")
    assert "0.2222" in git(api_repo, "show", "HEAD:model.pth.metrics.json")
    assert git(api_repo, "status", "--porcelain") == ""


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")  # torch deprecates it
def test_api_load_state_dict_refuses_a_quantized_tensor_naming_the_file_and_tensor(
    api_repo: Path,
) -> None:
    # Its object holds the integers only: the scale and zero point are in the pickle. The
    # manifest names the integers by where the pickle keeps them.
    quantized = torch.quantize_per_tensor(torch.arange(4.0), 0.5, 0, torch.qint8)
    repo = gtf.open(api_repo)
    repo.commit_checkpoint({"w": torch.ones(2), "q": quantized}, "model.pth", message="q")
    with pytest.raises(gtf.UnsupportedDTypeError) as error:
        repo.load_state_dict("model.pth")
    assert str(error.value) == (
        "model.pth: tensor 'q.args.0' is QI8, which cannot be loaded without torch.load"
    )


def test_api_load_state_dict_of_a_file_that_is_no_model_names_the_revision_and_path(
    api_repo: Path,
) -> None:
    # A file theta does not track, committed as it is: there is a blob, but no manifest.
    (api_repo / "notes.txt").write_text("not a model\n")
    git(api_repo, "add", "notes.txt")
    git(api_repo, "commit", "-qm", "notes")
    with pytest.raises(gtf.ModelNotFoundError) as error:
        gtf.open(api_repo).load_state_dict("notes.txt", rev="HEAD")
    assert str(error.value) == "HEAD: no model file notes.txt"


def test_api_restore_of_a_directory_names_the_revision_and_path(api_repo: Path) -> None:
    # The tree has an entry at the path, but a directory: there is nothing to write there.
    (api_repo / "runs").mkdir()
    (api_repo / "runs" / "notes.txt").write_text("a run\n")
    git(api_repo, "add", "runs")
    git(api_repo, "commit", "-qm", "runs")
    with pytest.raises(gtf.ModelNotFoundError) as error:
        gtf.open(api_repo).restore("runs", rev="HEAD")
    assert str(error.value) == "HEAD: no model file runs"
    assert (api_repo / "runs" / "notes.txt").read_text() == "a run\n"


def test_api_commits_from_several_threads_each_hold_their_own_file(api_repo: Path) -> None:
    """A trainer may commit from a checkpointing thread while another commits too: git's
    index is one per work tree, so the commits are made one at a time, each of its own file."""
    import threading

    failures: list[BaseException] = []

    def commit(worker: int) -> None:
        repo = gtf.open(api_repo)  # a Repository each, as separate threads may open
        try:
            for step in range(3):
                state = {"w": torch.full((2,), float(worker * 10 + step))}
                repo.commit_checkpoint(state, f"m{worker}.pt", message=f"m{worker}.pt {step}")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=commit, args=(worker,)) for worker in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    log = git(api_repo, "log", "--format=%x00%s", "--name-only", "-9").split("\0")[1:]
    assert len(log) == 9
    for entry in log:
        name, _step, *names = entry.split()  # the subject, then the files committed
        assert names == [name], log
