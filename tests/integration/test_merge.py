"""The merge=theta driver: real branches merged, rebased and cherry-picked by real git.

Every git command here runs with a poisoned ``torch`` on PYTHONPATH, so the
driver and the filter would fail if they imported it; the tests themselves
use torch to build checkpoints and to compute the expected numbers.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import GitEnv
from helpers import copy_repo, isolated_git_env, sha256_file, tensor_bytes, tracked_repo
from safetensors import safe_open
from safetensors.torch import save_file

MODEL = "model.pth"


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def base_checkpoint() -> dict[str, Any]:
    return {
        "model": {
            "0.weight": _randn(1, 8, 6),
            "0.bias": _randn(2, 8),
            "1.weight": _randn(3, 4, 8),
            "1.bias": _randn(4, 4),
        },
        "epoch": 1,
        "loss": 0.5,
    }


def changed(
    checkpoint: dict[str, Any], seed: int, *names: str, epoch: int | None = None
) -> dict[str, Any]:
    """A copy with the named tensors of ``model`` nudged by seeded noise,
    and optionally a new epoch.
    """
    new = {**checkpoint, "model": {k: v.clone() for k, v in checkpoint["model"].items()}}
    for offset, name in enumerate(names):
        new["model"][name] += 0.1 * _randn(seed * 100 + offset, *new["model"][name].shape)
    if epoch is not None:
        new["epoch"] = epoch
    return new


class Repo:
    """A repository and the isolated environment its git commands run in (torch poisoned)."""

    def __init__(self, git_env: GitEnv, path: Path, poison: Path) -> None:
        self.git_env = git_env
        self.path = path
        self.env = {"PYTHONPATH": os.pathsep.join([str(poison), os.environ.get("PYTHONPATH", "")])}

    def run(self, *args: str, check: bool = True, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        return self.git_env.run(*args, cwd=self.path, check=check, env={**self.env, **(env or {})})

    def git(self, *args: str, **kwargs: Any) -> str:
        return self.run("git", *args, **kwargs).stdout.decode()

    def commit_checkpoint(self, checkpoint: Any, message: str, name: str = MODEL) -> str:
        if name.endswith(".safetensors"):
            save_file(checkpoint, str(self.path / name))
        else:
            torch.save(checkpoint, self.path / name)
        self.git("add", name)
        self.git("commit", "-qm", message)
        return self.git("rev-parse", "HEAD").strip()

    def load(self, name: str = MODEL) -> Any:
        return torch.load(self.path / name, weights_only=True)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[GitEnv, Path, Path]:
    """A repository whose main branch holds base_checkpoint() in one commit."""
    root = tmp_path_factory.mktemp("merge")
    git_env = isolated_git_env(root)
    poison = root / "poison"
    (poison / "torch").mkdir(parents=True)
    (poison / "torch" / "__init__.py").write_text(
        "raise ImportError('the merge driver must not import torch')\n"
    )
    repo = Repo(git_env, tracked_repo(git_env, root / "template"), poison)
    repo.commit_checkpoint(base_checkpoint(), "base")
    return git_env, repo.path, poison


@pytest.fixture
def repo(template: tuple[GitEnv, Path, Path], tmp_path: Path) -> Repo:
    git_env, path, poison = template
    return Repo(git_env, copy_repo(path, tmp_path / "repo"), poison)


def branches(repo: Repo, ours: Any, theirs: Any, name: str = MODEL) -> None:
    """Commit ``theirs`` on branch ``side`` and ``ours`` on main, both from the current commit."""
    repo.git("checkout", "-qb", "side")
    repo.commit_checkpoint(theirs, "theirs", name)
    repo.git("checkout", "-q", "main")
    repo.commit_checkpoint(ours, "ours", name)


def saved_bytes_sha256(checkpoint: Any, tmp_path: Path, name: str = MODEL) -> str:
    """What torch.save writes for ``checkpoint`` under this file name
    (the name is part of the bytes).
    """
    target = tmp_path / "expected" / name
    target.parent.mkdir(exist_ok=True)
    torch.save(checkpoint, target)
    return sha256_file(target)


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert tensor_bytes(got[name]) == tensor_bytes(want[name]), f"{name} differs"


def test_install_writes_the_merge_driver_and_uninstall_removes_it(
    git_env: GitEnv, tmp_path: Path
) -> None:
    driver = git_env.git(tmp_path, "config", "--global", "merge.theta.driver").strip()
    assert re.fullmatch(r"\S*git-theta merge %O %A %B %P", driver), driver
    assert git_env.git(tmp_path, "config", "--global", "merge.theta.name").strip()
    git_env.theta(tmp_path, "uninstall", "--global")
    gone = git_env.run(
        "git", "config", "--global", "--get-regexp", r"^merge\.theta\.", cwd=tmp_path, check=False
    )
    assert gone.returncode == 1 and gone.stdout == b""


def test_merge_takes_each_side_s_changes_without_conflict(repo: Repo, tmp_path: Path) -> None:
    base = base_checkpoint()
    ours = changed(base, 1, "0.weight", epoch=2)
    theirs = changed(base, 2, "1.bias", "1.weight", epoch=3)
    branches(repo, ours, theirs)
    result = repo.run("git", "merge", "-q", "--no-edit", "side")
    assert "merged model.pth tensor by tensor: 1 from ours, 2 from theirs" in result.stderr.decode()
    expected = {
        **ours,
        "model": {
            **ours["model"],
            "1.bias": theirs["model"]["1.bias"],
            "1.weight": theirs["model"]["1.weight"],
        },
    }
    merged = repo.load()
    assert_same_tensors(merged["model"], expected["model"])
    # Non-tensor content comes from ours (both sides changed it).
    assert merged["epoch"] == 2 and merged["loss"] == 0.5
    # The archive is exactly what torch.save writes for the merged checkpoint:
    # CRCs and serialization id included.
    assert sha256_file(repo.path / MODEL) == saved_bytes_sha256(expected, tmp_path)
    assert repo.git("status", "--porcelain") == ""
    repo.run("git", "theta", "fsck")


def test_merge_conflict_by_default_keeps_ours_and_lists_the_tensors(repo: Repo) -> None:
    base = base_checkpoint()
    ours = changed(base, 1, "0.weight", "0.bias", epoch=2)
    theirs = changed(base, 2, "0.weight", epoch=3)
    branches(repo, ours, theirs)
    ours_sha = sha256_file(repo.path / MODEL)
    result = repo.run("git", "merge", "--no-edit", "side", check=False)
    assert result.returncode != 0
    err = result.stderr.decode()
    assert "model.pth: 1 tensor in conflict (merge strategy: conflict)" in err
    (row,) = [line for line in err.splitlines() if "model.0.weight" in line]
    cells = row.split()
    ours_delta = torch.linalg.vector_norm(
        (ours["model"]["0.weight"] - base["model"]["0.weight"]).double()
    )
    theirs_delta = torch.linalg.vector_norm(
        (theirs["model"]["0.weight"] - base["model"]["0.weight"]).double()
    )
    assert cells[:3] == ["model.0.weight", "F32", "[8,6]"]
    assert float(cells[3]) == pytest.approx(float(ours_delta), rel=1e-3)
    assert float(cells[4]) == pytest.approx(float(theirs_delta), rel=1e-3)
    assert "changed on both sides" in row
    assert "GIT_THETA_MERGE_STRATEGY=average git checkout -m -- model.pth" in err
    assert sha256_file(repo.path / MODEL) == ours_sha
    stages = sorted(line.split()[2] for line in repo.git("ls-files", "-u", MODEL).splitlines())
    assert stages == ["1", "2", "3"]
    # The hint settles it: redo this file's merge with a strategy, then add it.
    repo.run("git", "checkout", "-m", "--", MODEL, env={"GIT_THETA_MERGE_STRATEGY": "theirs"})
    repo.git("add", MODEL)
    repo.git("commit", "-qm", "merged")
    merged = repo.load()
    assert_same_tensors(merged["model"], {**ours["model"], "0.weight": theirs["model"]["0.weight"]})
    assert repo.git("status", "--porcelain") == ""


def dtype_checkpoint(seed: int, base: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """One tensor of each dtype the strategies combine; with ``base``,
    every tensor of it changed.
    """
    generator = torch.Generator().manual_seed(seed)
    if base is None:
        floats = {"f32": (5, 3), "f16": (6,), "bf16": (7,), "f64": (4,)}
        dtypes = {
            "f32": torch.float32,
            "f16": torch.float16,
            "bf16": torch.bfloat16,
            "f64": torch.float64,
        }
        tensors = {
            k: torch.randn(*shape, generator=generator).to(dtypes[k]) for k, shape in floats.items()
        }
        tensors["i64"] = torch.randint(-1000, 1000, (6,), generator=generator)
        tensors["u8"] = torch.randint(0, 256, (5,), generator=generator, dtype=torch.uint8)
        tensors["flags"] = torch.rand(8, generator=generator) > 0.5
        return {"state": tensors, "step": 0}
    state = {}
    for name, tensor in base.items():
        if tensor.dtype == torch.bool:
            state[name] = tensor ^ (torch.rand(tensor.shape, generator=generator) > 0.5)
        elif tensor.is_floating_point():
            state[name] = (
                tensor.double()
                + torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
            ).to(tensor.dtype)
        else:
            state[name] = tensor + torch.randint(
                1, 7, tensor.shape, generator=generator, dtype=tensor.dtype
            )
    return {"state": state, "step": seed}


def torch_combination(ours: torch.Tensor, theirs: torch.Tensor, alpha: float) -> torch.Tensor:
    """The documented rule, computed by torch: (1 − α)·ours + α·theirs in float64, cast back."""
    combined = (1 - alpha) * ours.double() + alpha * theirs.double()
    if ours.is_floating_point():
        return combined.to(ours.dtype)
    if ours.dtype == torch.bool:
        return torch.round(combined) != 0
    return torch.round(combined).to(ours.dtype)


@pytest.mark.parametrize(
    ("strategy", "how"),
    [
        ("ours", "config"),
        ("theirs", "config"),
        ("base", "environment"),
        ("average", "config"),
        ("weighted:0.25", "environment"),
    ],
)
def test_merge_strategy_numbers_match_torch(
    repo: Repo, tmp_path: Path, strategy: str, how: str
) -> None:
    base = dtype_checkpoint(0)
    repo.commit_checkpoint(base, "dtypes")
    ours, theirs = dtype_checkpoint(1, base["state"]), dtype_checkpoint(2, base["state"])
    branches(repo, ours, theirs)
    if how == "config":
        repo.git("config", "theta.merge.strategy", strategy)
        env = {}
    else:
        env = {"GIT_THETA_MERGE_STRATEGY": strategy}
    repo.run("git", "merge", "-q", "--no-edit", "side", env=env)
    sides = {"ours": ours, "theirs": theirs, "base": base}
    if strategy in sides:
        want = sides[strategy]["state"]
    else:
        alpha = 0.5 if strategy == "average" else float(strategy.split(":")[1])
        want = {
            k: torch_combination(ours["state"][k], theirs["state"][k], alpha) for k in base["state"]
        }
    merged = repo.load()
    assert_same_tensors(merged["state"], want)
    assert merged["step"] == 1  # from ours
    assert sha256_file(repo.path / MODEL) == saved_bytes_sha256(
        {"state": want, "step": 1}, tmp_path
    )


def test_merge_environment_strategy_overrides_config_and_bad_ones_fail(repo: Repo) -> None:
    base = base_checkpoint()
    ours, theirs = changed(base, 1, "0.bias"), changed(base, 2, "0.bias")
    branches(repo, ours, theirs)
    repo.git("config", "theta.merge.strategy", "ours")
    bad = repo.run(
        "git", "merge", "--no-edit", "side", check=False, env={"GIT_THETA_MERGE_STRATEGY": "median"}
    )
    assert bad.returncode != 0
    assert "unknown merge strategy 'median'" in bad.stderr.decode()
    repo.git("merge", "--abort")
    repo.run("git", "merge", "-q", "--no-edit", "side", env={"GIT_THETA_MERGE_STRATEGY": "theirs"})
    assert torch.equal(repo.load()["model"]["0.bias"], theirs["model"]["0.bias"])


def test_merge_shape_change_on_both_sides_is_a_conflict_whatever_the_strategy(repo: Repo) -> None:
    base = base_checkpoint()
    ours = changed(base, 1, "0.bias")
    theirs = {**base, "model": {**base["model"], "0.bias": torch.zeros(9)}}
    branches(repo, ours, theirs)
    result = repo.run(
        "git", "merge", "--no-edit", "side", check=False, env={"GIT_THETA_MERGE_STRATEGY": "theirs"}
    )
    assert result.returncode != 0
    (row,) = [line for line in result.stderr.decode().splitlines() if "model.0.bias" in line]
    assert "dtype or shape changed: base F32 [8], ours F32 [8], theirs F32 [9]" in row


def test_merge_a_tensor_added_by_theirs_takes_their_data_pkl(repo: Repo, tmp_path: Path) -> None:
    base = base_checkpoint()
    ours = changed(base, 1, "0.weight")
    theirs = changed(base, 2, "1.bias", epoch=5)
    theirs["model"]["2.weight"] = _randn(9, 3, 4)
    branches(repo, ours, theirs)
    result = repo.run("git", "merge", "-q", "--no-edit", "side")
    assert "the rest of the file from theirs" in result.stderr.decode()
    merged = repo.load()
    # Ours did not change the non-tensor content, so theirs' epoch is the three-way result too.
    assert merged["epoch"] == 5
    assert_same_tensors(merged["model"], {**theirs["model"], "0.weight": ours["model"]["0.weight"]})


def test_merge_tensors_added_on_both_sides_conflict_in_a_torch_zip(repo: Repo) -> None:
    base = base_checkpoint()
    ours, theirs = changed(base, 1, "0.weight"), changed(base, 2, "1.weight")
    ours["model"]["extra.a"] = _randn(5, 3)
    theirs["model"]["extra.b"] = _randn(6, 3)
    branches(repo, ours, theirs)
    result = repo.run(
        "git",
        "merge",
        "--no-edit",
        "side",
        check=False,
        env={"GIT_THETA_MERGE_STRATEGY": "average"},
    )
    assert result.returncode != 0
    err = result.stderr.decode()
    assert "both sides changed which tensors the file holds" in err
    assert "model.extra.a: added by ours" in err and "model.extra.b: added by theirs" in err


def test_merge_safetensors_adds_and_removes_tensors(repo: Repo) -> None:
    base = {"a": _randn(1, 4, 4), "b": _randn(2, 3), "c": _randn(3, 2, 2)}
    repo.commit_checkpoint(base, "st base", "model.safetensors")
    ours = {"a": base["a"] * 2, "b": base["b"]}  # changes a, removes c
    theirs = {
        **base,
        "b": base["b"] + 1,
        "d": torch.arange(6, dtype=torch.int64),
    }  # changes b, adds d
    branches(repo, ours, theirs, "model.safetensors")
    repo.run("git", "merge", "-q", "--no-edit", "side")
    with safe_open(str(repo.path / "model.safetensors"), framework="pt") as f:
        got = {name: f.get_tensor(name) for name in f.keys()}
    assert_same_tensors(got, {"a": ours["a"], "b": theirs["b"], "d": theirs["d"]})
    assert repo.git("status", "--porcelain") == ""


def feature_history(repo: Repo) -> dict[str, Any]:
    """main changes 1.bias; feature (from base) changes 0.weight, then 1.weight.
    Returns the checkpoints.
    """
    base = base_checkpoint()
    main = changed(base, 1, "1.bias", epoch=2)
    first = changed(base, 2, "0.weight", epoch=2)
    second = changed(first, 3, "1.weight", epoch=3)
    repo.git("checkout", "-qb", "feature")
    repo.commit_checkpoint(first, "feature 1")
    repo.commit_checkpoint(second, "feature 2")
    repo.git("checkout", "-q", "main")
    repo.commit_checkpoint(main, "main 1")
    return {"base": base, "main": main, "first": first, "second": second}


def test_rebase_replays_model_commits_tensor_by_tensor(repo: Repo) -> None:
    states = feature_history(repo)
    repo.git("checkout", "-q", "feature")
    repo.run("git", "rebase", "-q", "main")
    assert repo.git("log", "--format=%s", "-3").split("\n")[:3] == [
        "feature 2",
        "feature 1",
        "main 1",
    ]
    main_bias = states["main"]["model"]["1.bias"]
    tip = repo.load()
    assert_same_tensors(tip["model"], {**states["second"]["model"], "1.bias": main_bias})
    assert tip["epoch"] == 3
    repo.git("checkout", "-q", "HEAD~1")
    assert_same_tensors(repo.load()["model"], {**states["first"]["model"], "1.bias": main_bias})
    assert repo.git("status", "--porcelain") == ""


def test_cherry_pick_applies_only_that_commit_s_tensor_changes(repo: Repo) -> None:
    states = feature_history(repo)
    repo.run("git", "cherry-pick", "feature")
    # feature 2 changed 1.weight only; its parent's change to 0.weight stays out.
    want = {**states["main"]["model"], "1.weight": states["second"]["model"]["1.weight"]}
    assert_same_tensors(repo.load()["model"], want)
    assert repo.git("status", "--porcelain") == ""


def test_merged_checkpoint_loads_with_weights_only_and_the_expected_norm(repo: Repo) -> None:
    base = base_checkpoint()
    ours, theirs = changed(base, 1, "0.weight"), changed(base, 2, "0.weight")
    branches(repo, ours, theirs)
    repo.run("git", "merge", "-q", "--no-edit", "side", env={"GIT_THETA_MERGE_STRATEGY": "average"})
    merged = torch.load(repo.path / MODEL, weights_only=True)
    want = (
        0.5 * ours["model"]["0.weight"].double() + 0.5 * theirs["model"]["0.weight"].double()
    ).float()
    assert torch.equal(merged["model"]["0.weight"], want)
    assert math.isclose(
        float(torch.linalg.vector_norm(merged["model"]["0.weight"].double())),
        float(torch.linalg.vector_norm(want.double())),
    )
