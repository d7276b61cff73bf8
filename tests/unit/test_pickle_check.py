"""fsck --check-pickles on manifests whose objects are not what a clean would write."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from attacks import compressed_entries, torch_zip_bytes

from git_theta_filter.manifest import Manifest, Splice
from git_theta_filter.pickle_check import DataPklError, _check_one, read_data_pkl
from git_theta_filter.store.local import LocalStore

SHA = "0" * 64


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "theta")


def skeleton_only(store: LocalStore, data: bytes, format: str = "torch-zip") -> Manifest:
    """A manifest whose whole file is its skeleton, as no clean would write a torch zip."""
    return Manifest(format, len(data), SHA, store.write_bytes(data))


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"not a zip at all", "bad zip archive (File is not a zip file)"),
        (
            compressed_entries(torch_zip_bytes({"w": torch.ones(2)})),
            "data.pkl is compressed",
        ),
    ],
    ids=["not-a-zip", "deflated-data-pkl"],
)
def test_a_data_pkl_that_clean_would_not_store_is_refused_unread(
    store: LocalStore, data: bytes, reason: str
) -> None:
    with pytest.raises(DataPklError) as info:
        read_data_pkl(store, skeleton_only(store, data), "m.pth")
    assert str(info.value).startswith("m.pth: cannot read data.pkl: ") and reason in str(info.value)
    report = _check_one(store, skeleton_only(store, data), "m.pth", "1" * 40)
    assert report.suspicious and reason in report.unchecked


def test_an_opaque_object_shorter_than_its_splice_is_reported_not_crashed_on(
    store: LocalStore,
) -> None:
    # The skeleton is empty, and so is the payload that the splice says is 5 bytes.
    empty = store.write_bytes(b"")
    manifest = Manifest("opaque", 5, SHA, empty, splices=[Splice(0, 5, empty)])
    report = _check_one(store, manifest, "legacy.pth", "1" * 40)
    assert (
        report.unchecked is not None
        and "payload is 0 bytes, the manifest says 5" in report.unchecked
    )
