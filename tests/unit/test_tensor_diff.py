"""tensor_diff.py: two versions of a file compared tensor by tensor, and θ's norms."""

from __future__ import annotations

import io
import math

import pytest
import torch

from git_theta_filter.clean import clean
from git_theta_filter.manifest import Manifest
from git_theta_filter.stats import Statistician
from git_theta_filter.stats_cache import StatsCache
from git_theta_filter.store.local import LocalStore
from git_theta_filter.tensor_diff import (
    TensorGroup,
    TensorStatus,
    diff_manifests,
    is_optimizer_state,
    new_bytes,
)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, Manifest, Manifest]:
    store = LocalStore(tmp_path_factory.mktemp("diff") / "theta")

    def cleaned(state: dict) -> Manifest:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        return Manifest.parse(clean(buffer, store, "model.pth"))

    old = cleaned(
        {
            "w": torch.ones(2, 3),
            "b": torch.zeros(3),
            "gone": torch.ones(2),
            "steps": torch.arange(3, dtype=torch.int64),
            "optimizer.exp_avg": torch.ones(4),
        }
    )
    new = cleaned(
        {
            "w": torch.full((2, 3), 2.0),
            "b": torch.zeros(3),
            "added": torch.ones(4),
            "steps": torch.arange(3, dtype=torch.int32),
            "optimizer.exp_avg": torch.full((4,), 3.0),
        }
    )
    return store, old, new


def test_statuses_follow_names_dtypes_and_objects(versions) -> None:
    _, old, new = versions
    diff = diff_manifests(old, new, None, path="model.pth")
    assert {t.name: t.status for t in diff.tensors} == {
        "added": TensorStatus.ADDED,
        "b": TensorStatus.UNCHANGED,
        "gone": TensorStatus.REMOVED,
        "optimizer.exp_avg": TensorStatus.MODIFIED,
        "steps": TensorStatus.RETYPED,
        "w": TensorStatus.MODIFIED,
    }
    assert diff.summary.changed == 5 and diff.summary.unchanged == 1
    assert diff.summary.delta_norm is None, "no statistics were asked for"


def test_theta_norms_count_a_missing_tensor_as_zeros_and_leave_the_optimizer_apart(
    versions,
) -> None:
    store, old, new = versions
    diff = diff_manifests(old, new, Statistician(store, StatsCache(None)), path="model.pth")
    summary = diff.summary
    # θ: w, b, gone (old) and w, b, added (new); steps is not floating, exp_avg is optimizer state.
    assert summary.old_norm == pytest.approx(math.sqrt(6 + 2))
    assert summary.new_norm == pytest.approx(math.sqrt(24 + 4))
    # ‖Δθ‖² = w's 6 × 1² + added's 4 + gone's 2.
    assert summary.delta_norm == pytest.approx(math.sqrt(12))
    assert summary.relative_change == pytest.approx(math.sqrt(12) / math.sqrt(8))
    assert summary.optimizer_delta_norm == pytest.approx(math.sqrt(4 * 2**2))
    assert (summary.theta_tensors, summary.theta_changed) == (3, 3)


def test_a_selection_compares_and_sums_only_what_it_accepts(versions) -> None:
    store, old, new = versions
    stats = Statistician(store, StatsCache(None))
    diff = diff_manifests(old, new, stats, select=lambda name: name == "w")
    assert [t.name for t in diff.tensors] == ["w"]
    assert diff.summary.delta_norm == pytest.approx(math.sqrt(6))


def test_a_file_on_one_side_only_is_all_added_or_all_removed(versions) -> None:
    _, old, _ = versions
    assert {t.status for t in diff_manifests(None, old, None).tensors} == {TensorStatus.ADDED}
    assert {t.status for t in diff_manifests(old, None, None).tensors} == {TensorStatus.REMOVED}


@pytest.mark.parametrize(
    ("name", "path", "optimizer"),
    [
        ("optimizer.state.0.exp_avg", "model.pth", True),
        ("layer.weight", "optimizer.pt", True),
        ("layer.weight", "run_optim.pt", True),
        ("layer.weight", "model.pth", False),
        ("optimizer_like.weight", "model.pth", False),
    ],
)
def test_optimizer_state_is_told_by_a_key_component_or_the_files_name(
    name: str, path: str, optimizer: bool
) -> None:
    assert is_optimizer_state(name, path) is optimizer


def test_new_bytes_sums_the_payloads_of_the_new_objects(versions) -> None:
    _, old, new = versions
    lengths = new.payload_lengths()
    fresh = set(new.object_ids()) - set(old.object_ids())
    assert new_bytes(new, fresh) == sum(lengths[oid] for oid in fresh)
    assert new_bytes(new, []) == 0
    assert diff_manifests(old, new, None).tensors[0].group is TensorGroup.MODEL
