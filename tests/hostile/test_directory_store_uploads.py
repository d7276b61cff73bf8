"""Pushing into a shared directory store that someone else can write (docs/security.md,
class 5): an upload goes where a get would look, through no symbolic link below the root."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from git_theta_filter.store.directory import DirectoryStore, StoreFileRefusedError

CONTENT = b"an object's canonical bytes"
OID = hashlib.sha256(CONTENT).hexdigest()


@pytest.mark.parametrize("link", ["first", "second"])
def test_upload_never_follows_a_symlink_on_the_way_to_the_object(tmp_path: Path, link: str):
    """A link planted as ``aa`` or ``aa/bb`` would have sent the object file into any
    directory the pusher can write."""
    store = DirectoryStore(tmp_path / "shared" / "objects")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    first = store.root / OID[:2]
    if link == "first":
        store.root.mkdir(parents=True)
        first.symlink_to(elsewhere, target_is_directory=True)
    else:
        first.mkdir(parents=True)
        (first / OID[2:4]).symlink_to(elsewhere, target_is_directory=True)
    source = tmp_path / "object"
    source.write_bytes(CONTENT)
    with pytest.raises(StoreFileRefusedError, match="is a symbolic link; refused"):
        store.put(OID, source)
    assert list(elsewhere.iterdir()) == []


def test_upload_writes_the_object_once_and_leaves_no_temp_file(tmp_path: Path):
    (tmp_path / "shared").mkdir()  # the anchor: a store on an unmounted disk must fail
    store = DirectoryStore(tmp_path / "shared" / "objects")
    source = tmp_path / "object"
    source.write_bytes(CONTENT)
    assert store.put(OID, source) is True
    assert store.put(OID, source) is False
    directory = store.root / OID[:2] / OID[2:4]
    assert [path.name for path in directory.iterdir()] == [OID]
    assert (directory / OID).read_bytes() == CONTENT
    assert (directory / OID).stat().st_mode & 0o777 == 0o444
