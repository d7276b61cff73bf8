"""object_sizes: the object file sizes a manifest allows, checked against what clean wrote."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from helpers import canonical_bytes

from git_theta_filter.clean import clean
from git_theta_filter.manifest import Manifest
from git_theta_filter.object_sizes import object_size_candidates
from git_theta_filter.store.local import LocalStore


def cleaned(store: LocalStore, obj: object) -> Manifest:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return Manifest.parse(clean(buffer, store, "model.pth"))


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "theta")


def test_object_size_candidates_put_the_size_clean_wrote_first(store: LocalStore) -> None:
    """Whole tensors (their own dtype and shape), views of one storage (the storage's
    dtype, one dimension), a bf16 tensor, and the skeleton (U8 bytes). A (250, 1)
    tensor's header is longer than a (250,) one's: two sizes, the right one first."""
    shared = torch.arange(24, dtype=torch.float32)
    manifest = cleaned(
        store,
        {
            "weight": torch.ones(4, 6, dtype=torch.float16),
            "half": torch.zeros(3, dtype=torch.bfloat16),
            "rows": shared.view(4, 6),
            "tail": shared[12:],
            "column": torch.ones(250, 1, dtype=torch.float16),
        },
    )
    candidates = object_size_candidates([manifest])
    assert set(candidates) == set(manifest.object_ids())
    for oid, sizes in candidates.items():
        assert sizes[0] == len(canonical_bytes(store, oid)), oid
        assert len(set(sizes)) == len(sizes)
    assert max(len(sizes) for sizes in candidates.values()) > 1


def test_object_size_candidates_cover_every_manifest_given(store: LocalStore) -> None:
    first = cleaned(store, {"a": torch.ones(5)})
    second = cleaned(store, {"b": torch.ones(7, dtype=torch.int64)})
    candidates = object_size_candidates(iter([first, second]))  # any iterable, read once
    assert set(candidates) == set(first.object_ids()) | set(second.object_ids())
    assert object_size_candidates([]) == {}
