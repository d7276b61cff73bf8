"""git theta-diff: tensor-level changes between commits, the index and the working tree."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import remove_local_objects
from theta_history import History, commit, model_at, norm, shared_history

from git_theta_filter.manifest import Manifest

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schema"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return shared_history(tmp_path_factory, "theta-diff")


@pytest.fixture
def own_history(history: History, tmp_path: Path) -> History:
    return history.copy(tmp_path / "repo")


def changed(file: dict) -> dict[str, dict]:
    return {t["name"]: t for t in file["tensors"] if t["status"] != "unchanged"}


def expected_numbers(old: torch.Tensor, new: torch.Tensor) -> dict[str, float]:
    old64, new64 = old.double().flatten(), new.double().flatten()
    delta = new64 - old64
    return {
        "old_norm": norm(old64),
        "new_norm": norm(new64),
        "delta_norm": norm(delta),
        "relative_change": norm(delta) / norm(old64),
        "cosine_similarity": torch.dot(old64, new64).item() / (norm(old64) * norm(new64)),
        "max_abs_delta": delta.abs().max().item(),
        "changed_fraction": (old.flatten() != new.flatten()).double().mean().item(),
    }


def assert_numbers(tensor: dict, old: torch.Tensor, new: torch.Tensor) -> None:
    for key, value in expected_numbers(old, new).items():
        assert tensor[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def manifest_at(history: History, spec: str) -> Manifest:
    return Manifest.parse(history.run("git", "show", spec).stdout)


def test_theta_diff_two_commits_reports_the_exact_changed_tensors_and_numbers(
    history: History,
) -> None:
    result = history.theta_json("diff", "HEAD~2", "HEAD")
    assert result["schema"] == "git-theta-diff/1"
    assert (
        result["old"]["commit"] == history.commits[1]
        and result["new"]["commit"] == history.commits[3]
    )
    (file,) = result["files"]
    assert file["path"] == "model.pth" and file["status"] == "modified"
    tensors = changed(file)
    assert set(tensors) == {"model.0.weight", "model.2.bias"}
    old, new = history.states[1], history.states[3]
    for name, tensor in tensors.items():
        assert (
            tensor["status"] == "modified" and tensor["old_dtype"] == tensor["new_dtype"] == "F32"
        )
        assert tensor["old_shape"] == tensor["new_shape"] == list(new[name].shape)
        assert tensor["new_nan_count"] == tensor["new_inf_count"] == 0
        assert_numbers(tensor, old[name], new[name])
    # The known amounts: +0.5 on all 128 weights, +2.0 on one of four biases.
    assert tensors["model.0.weight"]["changed_fraction"] == 1.0
    assert tensors["model.0.weight"]["delta_norm"] == pytest.approx(0.5 * math.sqrt(128), rel=1e-6)
    assert tensors["model.2.bias"]["changed_fraction"] == 0.25
    assert tensors["model.2.bias"]["max_abs_delta"] == pytest.approx(2.0, rel=1e-6)
    # Sorted by relative change, largest first.
    assert [t["name"] for t in file["tensors"]] == sorted(
        tensors, key=lambda n: -tensors[n]["relative_change"]
    )

    summary = file["summary"]
    assert (
        summary["tensors_modified"],
        summary["tensors_added"],
        summary["tensors_removed"],
        summary["tensors_retyped"],
        summary["tensors_unchanged"],
    ) == (2, 0, 0, 0, 2)
    old_theta = math.sqrt(sum(norm(t) ** 2 for t in old.values()))
    delta_theta = math.sqrt(sum(norm(new[k].double() - old[k].double()) ** 2 for k in new))
    assert summary["old_norm"] == pytest.approx(old_theta, rel=1e-9)
    assert summary["relative_change"] == pytest.approx(delta_theta / old_theta, rel=1e-9)
    head = manifest_at(history, "HEAD:model.pth")
    lengths = head.payload_lengths()
    new_objects = {head.skeleton} | {t.oid for t in head.tensors if t.name in tensors}
    assert summary["new_storage_bytes"] == sum(lengths[oid] for oid in new_objects)
    assert summary["missing_objects"] == 0

    metrics = {m["name"]: m for m in file["metrics"]}
    assert metrics["epoch"] == {"name": "epoch", "old": 1, "new": 3, "change": 2}
    assert metrics["metrics.val_acc"]["change"] == pytest.approx(0.2)
    assert metrics["eval.f1"] == {"name": "eval.f1", "old": None, "new": 0.75, "change": None}
    assert metrics["test.bleu"] == {"name": "test.bleu", "old": None, "new": 24.0, "change": None}
    assert "config.lr" not in metrics  # unchanged metrics only with --all


def test_theta_diff_range_forms_agree(history: History) -> None:
    first, last = history.commits[1], history.commits[3]
    expected = history.theta_json("diff", first, last)["files"]
    assert history.theta_json("diff", f"{first}..{last}")["files"] == expected
    assert (
        history.theta_json("diff", f"{first}...{last}")["files"] == expected
    )  # merge base is `first`
    assert history.theta_json("diff", f"{first}..")["files"] == expected  # an empty side is HEAD
    assert history.theta_json("diff", first, last, "--", "model.pth")["files"] == expected
    all_tensors = history.theta_json("diff", "--all", first, last)["files"][0]
    assert [t["status"] for t in all_tensors["tensors"]].count("unchanged") == 2
    assert {m["name"] for m in all_tensors["metrics"]} >= {"config.lr", "config.use_amp"}


def test_theta_diff_working_tree_and_index(own_history: History) -> None:
    history = own_history
    repo = history.repo
    assert history.theta_json("diff")["files"] == []
    model = model_at(3)
    with torch.no_grad():
        model[2].weight *= 2  # ‖new−old‖ = ‖old‖ exactly
    checkpoint = {"model": model.state_dict(), "epoch": 4}
    torch.save(checkpoint, repo / "model.pth")
    for args in ((), ("HEAD",)):
        (file,) = history.theta_json("diff", *args)["files"]
        tensors = changed(file)
        assert set(tensors) == {"model.2.weight"}
        assert tensors["model.2.weight"]["relative_change"] == pytest.approx(1.0, rel=1e-12)
        assert tensors["model.2.weight"]["cosine_similarity"] == pytest.approx(1.0, rel=1e-12)
        assert {m["name"]: m["new"] for m in file["metrics"]}["epoch"] == 4
    # The diff cleaned the work-tree file into a scratch index, never into the real one.
    assert history.theta_json("diff", "--cached")["files"] == []
    assert history.run("git", "status", "--porcelain").stdout == b" M model.pth\n"
    history.run("git", "add", "model.pth")
    assert set(changed(history.theta_json("diff", "--cached")["files"][0])) == {"model.2.weight"}
    assert history.theta_json("diff")["files"] == []
    # A deleted model file is a removed file.
    (repo / "model.pth").unlink()
    (file,) = history.theta_json("diff")["files"]
    assert file["status"] == "removed" and {t["status"] for t in file["tensors"]} == {"removed"}


def test_theta_diff_of_a_work_tree_the_filter_cannot_clean_is_an_error(
    own_history: History,
) -> None:
    # Without the check, a failed `git add -u` left the scratch index as it was, and
    # the changed file was reported as unchanged.
    history = own_history
    history.run("git", "config", "filter.theta.process", "false")
    history.run("git", "config", "filter.theta.required", "true")
    model = model_at(3)
    with torch.no_grad():
        model[2].weight *= 2
    torch.save({"model": model.state_dict(), "epoch": 4}, history.repo / "model.pth")
    result = history.theta("diff")
    assert result.returncode != 0 and result.stdout == ""
    # git's last line, which the error quotes, depends on when the filter died.
    assert result.stderr.startswith("git-theta: error: `git add -u`: ")


def test_theta_diff_added_removed_retyped_and_every_dtype(own_history: History) -> None:
    history = own_history
    torch.manual_seed(1)
    before = {
        "fp32": torch.randn(300, 300),  # more than one chunk
        "fp16": torch.randn(64, 8).half(),
        "bf16": torch.randn(64, 8).bfloat16(),
        "fp64": torch.randn(50, dtype=torch.float64),
        "int": torch.randint(-100, 100, (40,)),
        "to_bf16": torch.randn(16, 4),
        "reshaped": torch.randn(6, 4),
        "dropped": torch.randn(3),
    }
    after = {
        "fp32": before["fp32"] + torch.where(torch.arange(300) % 3 == 0, 0.25, 0.0),
        "fp16": (before["fp16"].float() * 1.5).half(),
        "bf16": (before["bf16"].float() - 0.125).bfloat16(),
        "fp64": before["fp64"] * -1.0,
        "int": before["int"] + 1,
        "to_bf16": before["to_bf16"].bfloat16(),
        "reshaped": before["reshaped"].reshape(4, 6),
        "added": torch.tensor([float("nan"), float("inf"), 1.0]),
    }
    for state, day in ((before, 20), (after, 21)):
        torch.save(state, history.repo / "dtypes.pth")
        commit(history.git_env, history.repo, f"dtypes {day}", "dtypes.pth", day=day)
    result = history.theta_json("diff", "HEAD~1", "HEAD", "--", "dtypes.pth")
    (file,) = result["files"]
    tensors = {t["name"]: t for t in file["tensors"]}
    assert {name: t["status"] for name, t in tensors.items()} == {
        "fp32": "modified",
        "fp16": "modified",
        "bf16": "modified",
        "fp64": "modified",
        "int": "modified",
        "to_bf16": "retyped",
        "reshaped": "retyped",
        "dropped": "removed",
        "added": "added",
    }
    for name in ("fp32", "fp16", "bf16", "fp64", "to_bf16"):
        assert_numbers(tensors[name], before[name], after[name])
    assert tensors["fp32"]["changed_fraction"] == pytest.approx(1 / 3, abs=1e-3)
    assert tensors["to_bf16"]["old_dtype"] == "F32" and tensors["to_bf16"]["new_dtype"] == "BF16"
    # Integers: norms, but only changed/unchanged for the change itself.
    assert tensors["int"]["old_norm"] == pytest.approx(norm(before["int"]), rel=1e-9)
    assert tensors["int"]["new_norm"] == pytest.approx(norm(after["int"]), rel=1e-9)
    assert tensors["int"]["delta_norm"] is None and tensors["int"]["relative_change"] is None
    assert tensors["reshaped"]["delta_norm"] is None and tensors["reshaped"]["new_shape"] == [4, 6]
    assert tensors["added"]["new_nan_count"] == 1 and tensors["added"]["new_inf_count"] == 1
    assert tensors["added"]["new_norm"] == "nan"
    assert tensors["dropped"]["old_norm"] == pytest.approx(norm(before["dropped"]), rel=1e-9)
    summary = file["summary"]
    assert (
        summary["tensors_modified"],
        summary["tensors_added"],
        summary["tensors_removed"],
        summary["tensors_retyped"],
    ) == (5, 1, 1, 2)
    text = history.theta_ok("diff", "HEAD~1", "HEAD", "--", "dtypes.pth")
    assert "new: 1 NaN, 1 Inf" in text and "F32→BF16" in text and "[6,4]→[4,6]" in text
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(result, json.loads((SCHEMA_DIR / "theta-diff.schema.json").read_text()))


def test_theta_diff_views_of_one_storage(own_history: History) -> None:
    history = own_history
    base = torch.arange(40, dtype=torch.float32) / 7
    state = {
        "base": base,
        "window": base[10:20],
        "every_fourth": base[::4],
        "grid": base.view(5, 8)[:, 1:3],
    }
    torch.save(state, history.repo / "views.pth")
    commit(history.git_env, history.repo, "views", "views.pth", day=20)
    with torch.no_grad():
        base[0] += 3.0  # inside base, every_fourth; outside window and grid
    torch.save(state, history.repo / "views.pth")
    views = {t.name: t for t in manifest_at(history, "HEAD:views.pth").tensors}
    assert (views["window"].offset, views["window"].stride) == (10, (1,))
    assert (views["grid"].offset, views["grid"].stride) == (1, (8, 1))
    (file,) = history.theta_json("diff", "--all", "HEAD", "--", "views.pth")["files"]
    tensors = {t["name"]: t for t in file["tensors"]}
    assert {n: t["status"] for n, t in tensors.items()} == {
        "base": "modified",
        "every_fourth": "modified",
        "window": "unchanged",
        "grid": "unchanged",
    }
    before = torch.arange(40, dtype=torch.float32) / 7
    old_views = {
        "base": before,
        "window": before[10:20],
        "every_fourth": before[::4],
        "grid": before.view(5, 8)[:, 1:3],
    }
    for name, tensor in tensors.items():
        assert tensor["old_norm"] == pytest.approx(norm(old_views[name]), rel=1e-9)
        assert tensor["new_norm"] == pytest.approx(norm(state[name]), rel=1e-9)
    assert_numbers(tensors["every_fourth"], old_views["every_fourth"], state["every_fourth"])
    assert tensors["every_fourth"]["changed_fraction"] == 0.1


def test_theta_diff_a_view_that_moved_within_an_unchanged_storage_is_modified(
    own_history: History,
) -> None:
    # The storage's bytes, so its object, stay the same; only the view's offset or
    # stride changes, and with it every element the tensor holds.
    history = own_history
    storage = torch.arange(40, dtype=torch.float32) / 7
    before = {"storage": storage, "window": storage[10:20], "grid": storage.view(5, 8)[:, 1:3]}
    torch.save(before, history.repo / "views.pth")
    commit(history.git_env, history.repo, "views", "views.pth", day=20)
    after = {"storage": storage, "window": storage[12:22], "grid": storage.view(8, 5)[:5, 1:3]}
    torch.save(after, history.repo / "views.pth")
    history.run("git", "add", "views.pth")
    old = {t.name: t for t in manifest_at(history, "HEAD:views.pth").tensors}
    new = {t.name: t for t in manifest_at(history, ":views.pth").tensors}
    (file,) = history.theta_json("diff", "--all", "--cached", "--", "views.pth")["files"]
    tensors = {t["name"]: t for t in file["tensors"]}
    assert {n: t["status"] for n, t in tensors.items()} == {
        "storage": "unchanged",
        "window": "modified",
        "grid": "modified",
    }
    for name in ("window", "grid"):
        # Same object on both sides: only the layout tells the two versions apart.
        assert old[name].oid == new[name].oid
        assert (old[name].offset, old[name].stride) != (new[name].offset, new[name].stride)
        assert_numbers(tensors[name], before[name], after[name])
    assert file["summary"]["tensors_modified"] == 2
    assert file["summary"]["delta_norm"] == pytest.approx(
        math.hypot(norm(after["window"] - before["window"]), norm(after["grid"] - before["grid"])),
        rel=1e-9,
    )


def test_theta_diff_output_formats(history: History) -> None:
    first, last = history.commits[1], history.commits[3]
    text = history.theta_ok("diff", first, last)
    lines = text.splitlines()
    # Each side named once: a revision given as an id is not followed by the same id again.
    assert lines[0] == f"model.pth  ({first[:7]} → {last[:7]}, file modified)"
    named = history.theta_ok("diff", "HEAD~2", last[:9]).splitlines()[0]
    assert named == f"model.pth  (HEAD~2 ({first[:7]}) → {last[:9]}, file modified)"
    assert lines[1].split()[:3] == [
        "status",
        "tensor",
        "dtype",
    ]
    assert lines[2].split()[:2] == ["modified", "model.2.bias"] and lines[3].split()[:2] == [
        "modified",
        "model.0.weight",
    ]
    assert "2 modified, 0 added, 0 removed, θ changed 2/4, ‖Δθ‖/‖θ‖" in text
    assert "optimizer state" not in text  # a plain state_dict has none
    assert any(line.split() == ["Metric", "old", "new", "change"] for line in lines)
    assert any(line.split() == ["epoch", "1", "3", "+2"] for line in lines)
    assert "\x1b[" not in text  # no colour off a terminal
    stat = history.theta_ok("diff", "--stat", first, last).splitlines()
    assert len(stat) == 1 and stat[0].startswith(
        "model.pth | 2 modified, 0 added, 0 removed, θ changed 2/4"
    )
    markdown = history.theta_ok("diff", "--md", first, last)
    assert (
        "| status | tensor | dtype | shape |" in markdown
        and "| modified | `model.2.bias` |" in markdown
    )
    assert "| Metric | old | new | change |" in markdown
    top = history.theta_json("diff", "--top", "1", first, last)["files"][0]["tensors"]
    assert [t["name"] for t in top] == ["model.2.bias"]
    by_name = history.theta_json("diff", "--sort", "name", "--all", first, last)["files"][0][
        "tensors"
    ]
    assert [t["name"] for t in by_name] == sorted(t["name"] for t in by_name)
    by_delta = history.theta_json("diff", "--sort", "delta", first, last)["files"][0]["tensors"]
    assert [t["name"] for t in by_delta] == ["model.0.weight", "model.2.bias"]  # 5.66 > 2.0


def test_theta_diff_missing_objects_show_unavailable_norms(own_history: History) -> None:
    history = own_history
    remove_local_objects(history.repo)
    for path in (history.repo / ".git" / "theta" / "stats").glob("*"):
        path.unlink()
    result = history.theta("diff", "HEAD~1", "HEAD")
    assert result.returncode == 0
    assert "n/a" in result.stdout and "git theta fetch" in result.stderr
    (file,) = history.theta_json("diff", "HEAD~1", "HEAD")["files"]
    assert set(changed(file)) == {"model.2.bias"}  # statuses need no payload
    assert file["summary"]["relative_change"] is None and file["summary"]["missing_objects"] > 0
    assert {m["name"] for m in file["metrics"]} >= {"epoch", "eval.f1"}


@pytest.mark.parametrize(
    "args, message",
    [
        (("nope",), "ambiguous argument 'nope'"),
        (("nope", "--"), "bad revision 'nope'"),
        (("HEAD~1", "--", "results.toml"), "pathspec 'results.toml' did not match any model file"),
        (("--", "no/such/model.pth"), "pathspec 'no/such/model.pth' did not match any model file"),
    ],
)
def test_theta_diff_bad_input_exits_128(
    history: History, args: tuple[str, ...], message: str
) -> None:
    result = history.theta("diff", *args)
    assert result.returncode == 128 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr


def test_theta_diff_symmetric_range_of_unrelated_histories_names_the_range(
    own_history: History,
) -> None:
    # A root commit of its own shares no merge base with HEAD: `A...B` has no old side.
    tree = own_history.run("git", "rev-parse", "HEAD^{tree}").stdout.decode().strip()
    unrelated = (
        own_history.run("git", "commit-tree", tree, "-m", "unrelated").stdout.decode().strip()
    )
    result = own_history.theta("diff", f"HEAD...{unrelated}")
    assert result.returncode == 128 and result.stdout == ""
    assert f"bad revision 'HEAD...{unrelated}'" in result.stderr


@pytest.mark.parametrize(
    "args, most",
    [
        (("HEAD", "HEAD~1", "HEAD~2"), "two revisions, not 3"),
        (("--cached", "HEAD", "HEAD~1"), "one"),
    ],
)
def test_theta_diff_more_revisions_than_sides_is_a_usage_error(
    history: History, args: tuple[str, ...], most: str
) -> None:
    result = history.theta("diff", *args)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert f"a diff compares two versions: at most {most}" in line
    assert "usage: git theta-diff" in line and "bad revision" not in line
    script = history.run("git", "theta-diff", "HEAD", "HEAD~1", "HEAD~2", check=False)
    assert script.returncode == 2


def test_theta_diff_console_script_alias_and_subdirectory(history: History) -> None:
    out = history.run("git", "theta-diff", "--stat", "HEAD~1", "HEAD").stdout
    assert out == history.run("git", "theta", "diff", "--stat", "HEAD~1", "HEAD").stdout
    assert out.startswith(b"model.pth | 1 modified")
    bad = history.run("git", "theta-diff", "no-such-rev", check=False)
    assert bad.returncode == 128 and bad.stderr.count(b"\n") == 1
    # Paths are relative to the current directory, as in git.
    subdirectory = history.repo / "sub"
    subdirectory.mkdir(exist_ok=True)
    result = history.theta(
        "diff", "--stat", "HEAD~1", "HEAD", "--", "../model.pth", cwd=subdirectory
    )
    assert result.stdout.startswith("model.pth | 1 modified")
    outside = history.theta("diff", "HEAD~1", "HEAD", "--", "../../elsewhere.pth", cwd=subdirectory)
    assert outside.returncode == 128


def test_theta_diff_cached_before_the_first_commit(history: History, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    history.run("git", "init", "-q", str(fresh), cwd=tmp_path)
    history.run("git", "theta", "track", "*.pth", cwd=fresh)
    torch.save(model_at(1).state_dict(), fresh / "model.pth")
    history.run("git", "add", "model.pth", cwd=fresh)
    (file,) = json.loads(history.theta("diff", "--cached", "--json", cwd=fresh).stdout)["files"]
    assert file["status"] == "added" and file["summary"]["tensors_added"] == 4
    assert history.theta("log", cwd=fresh).returncode == 128  # no HEAD to walk from, as git log


def commit_adam_history(history: History) -> list[dict]:
    """adam.pth twice: a linear model with Adam's state after one and after two steps."""
    torch.manual_seed(2)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.Adam(model.parameters())
    states = []
    for _ in range(2):
        model(torch.randn(3, 8)).sum().backward()
        optimizer.step()
        states.append(
            {
                "model": {k: v.clone() for k, v in model.state_dict().items()},
                "optimizer": copy.deepcopy(optimizer.state_dict()),
            }
        )
        torch.save(states[-1], history.repo / "adam.pth")
        commit(
            history.git_env, history.repo, f"adam {len(states)}", "adam.pth", day=22 + len(states)
        )
    return states


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.double().flatten() for t in tensors])


def test_theta_diff_theta_leaves_out_optimizer_state(own_history: History) -> None:
    """Adam's moments and step counts are listed, but ‖θ‖ is the model's weights alone."""
    history = own_history
    states = commit_adam_history(history)
    result = history.theta_json("diff", "HEAD~1", "HEAD", "--", "adam.pth")
    (file,) = result["files"]
    names = {t["name"] for t in file["tensors"]}
    assert "optimizer.state.0.exp_avg" in names and "optimizer.state.0.step" in names
    old_weights = flat(states[0]["model"].values())
    new_weights = flat(states[1]["model"].values())
    summary = file["summary"]
    assert math.isclose(
        summary["old_norm"], torch.linalg.vector_norm(old_weights).item(), rel_tol=1e-9
    )
    assert math.isclose(
        summary["delta_norm"],
        torch.linalg.vector_norm(new_weights - old_weights).item(),
        rel_tol=1e-9,
    )
    # "changed n/m" counts the same set as ‖θ‖: the two weights, not Adam's six tensors.
    assert (summary["theta_tensors_changed"], summary["theta_tensors"]) == (2, 2)
    assert (summary["optimizer_tensors_changed"], summary["optimizer_tensors"]) == (6, 6)
    old_state = [t for s in states[0]["optimizer"]["state"].values() for t in s.values()]
    new_state = [t for s in states[1]["optimizer"]["state"].values() for t in s.values()]
    assert math.isclose(
        summary["optimizer_delta_norm"],
        torch.linalg.vector_norm(flat(new_state) - flat(old_state)).item(),
        rel_tol=1e-9,
    )
    (entry, *_) = history.theta_json("log", "--", "adam.pth")["entries"]
    assert (entry["theta_tensors_changed"], entry["theta_tensors"]) == (2, 2)
    assert (entry["tensors_changed"], entry["tensors"]) == (8, 8)  # every tensor, as before
    assert entry["norm"] == pytest.approx(torch.linalg.vector_norm(new_weights).item(), rel=1e-9)
    row = history.theta_ok("log", "-n", "1", "--", "adam.pth").splitlines()[1]
    assert " 2/2 " in row


def test_theta_diff_lists_the_model_first_and_collapses_optimizer_state(
    own_history: History,
) -> None:
    history = own_history
    commit_adam_history(history)
    text = history.theta_ok("diff", "HEAD~1", "HEAD", "--", "adam.pth").splitlines()
    assert {line.split()[1] for line in text[2:4]} == {"model.weight", "model.bias"}
    assert text[4].startswith("  optimizer state: 6 of 6 tensors changed, ‖Δ‖ ")
    assert text[4].endswith(" (--all lists them)")
    assert text[5].startswith("  2 modified, 0 added, 0 removed, θ changed 2/2, ‖Δθ‖/‖θ‖ ")
    assert not any("optimizer.state" in line for line in text)
    expanded = history.theta_ok("diff", "--all", "HEAD~1", "HEAD", "--", "adam.pth").splitlines()
    listed = [line.split()[1] for line in expanded if line.startswith("  modified")]
    assert len(listed) == 8 and all(n.startswith("model.") for n in listed[:2])
    assert all(n.startswith("optimizer.state.") for n in listed[2:])
    assert not any(line.endswith("(--all lists them)") for line in expanded)
    stat = history.theta_ok("diff", "--stat", "HEAD~1", "HEAD", "--", "adam.pth")
    assert stat.rstrip().endswith("; optimizer state 6/6 changed")
    # JSON lists every tensor, each with its group, the model's first.
    (file,) = history.theta_json("diff", "HEAD~1", "HEAD", "--", "adam.pth")["files"]
    groups = [t["group"] for t in file["tensors"]]
    assert groups == ["model"] * 2 + ["optimizer"] * 6
    markdown = history.theta_ok("diff", "--md", "HEAD~1", "HEAD", "--", "adam.pth")
    assert "optimizer state: 6 of 6 tensors changed" in markdown
    assert "`optimizer.state.0.exp_avg`" not in markdown


def test_theta_diff_include_and_exclude_choose_the_tensors_and_the_summary(
    history: History,
) -> None:
    first, last = history.commits[1], history.commits[3]
    old, new = history.states[1], history.states[3]

    def summary_over(*args: str) -> tuple[set[str], dict]:
        (file,) = history.theta_json("diff", "--all", *args, first, last)["files"]
        return {t["name"] for t in file["tensors"]}, file["summary"]

    names, summary = summary_over("--include", "model.2.*")
    assert names == {"model.2.weight", "model.2.bias"}
    assert summary["tensors_modified"] == 1 and summary["tensors_unchanged"] == 1
    assert summary["old_norm"] == pytest.approx(
        norm(flat([old["model.2.weight"], old["model.2.bias"]]))
    )
    assert summary["theta_tensors"] == 2 and summary["theta_tensors_changed"] == 1
    names, summary = summary_over("--exclude", "*.bias", "--exclude", "model.2.*")
    assert names == {"model.0.weight"}
    assert summary["relative_change"] == pytest.approx(
        norm(new["model.0.weight"] - old["model.0.weight"]) / norm(old["model.0.weight"])
    )
    names, _ = summary_over("--include", "*.bias", "--exclude", "model.0.*")
    assert names == {"model.2.bias"}
    text = history.theta_ok("diff", "--include", "model.0.*", first, last)
    assert "model.2.bias" not in text and "θ changed 1/2" in text
    nothing = history.theta_json("diff", "--include", "no.such.*", first, last)["files"]
    assert nothing[0]["tensors"] == [] and nothing[0]["summary"]["theta_tensors"] == 0


def test_theta_diff_top_refuses_a_negative_count(capsys: pytest.CaptureFixture) -> None:
    from git_theta_filter.cli.diff import build_parser

    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["--top", "-1"])
    assert caught.value.code == 2
    assert "argument --top: -1 is negative" in capsys.readouterr().err
    assert build_parser().parse_args(["--top", "0"]).top == 0
