"""LocalStore.expecting(): payloads compared with the previous version's objects
give the same ids.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
import torch

from git_theta_filter.clean import clean
from git_theta_filter.manifest import Manifest
from git_theta_filter.smudge import prepare_smudge
from git_theta_filter.store.local import COPY_CHUNK, LocalStore


def torch_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def clean_manifest(store: LocalStore, data: bytes) -> Manifest:
    return Manifest.parse(clean(io.BytesIO(data), store, "model.pth", warn=lambda message: None))


def payload_oids(manifest: Manifest) -> list[str]:
    return [splice.oid for splice in manifest.splices]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "theta")


@pytest.fixture
def versions() -> list[dict]:
    """A base state, then: one tensor changed in its last byte only, one changed throughout,
    one shape changed.
    """
    generator = torch.Generator().manual_seed(0)
    # Larger than one copy chunk, so that a late difference comes after whole chunks agreed.
    big = torch.randn(COPY_CHUNK // 4 + 1000, generator=generator)
    base = {"big": big, "small": torch.randn(10, generator=generator), "same": torch.ones(3, 4)}
    tail_changed = dict(base, big=big.clone())
    tail_changed["big"][-1] += 1
    all_changed = dict(base, small=base["small"] + 1)
    reshaped = dict(base, same=torch.ones(4, 3))
    return [base, tail_changed, all_changed, reshaped]


def test_expecting_gives_the_ids_a_plain_clean_gives(
    tmp_path: Path, store: LocalStore, versions: list[dict]
) -> None:
    previous = payload_oids(clean_manifest(store, torch_bytes(versions[0])))
    for state in versions[1:]:
        data = torch_bytes(state)
        with store.expecting(previous):
            compared = clean_manifest(store, data)
        plain = clean_manifest(LocalStore(tmp_path / f"plain-{len(data)}-{id(state)}"), data)
        assert compared.render() == plain.render()
        for oid in payload_oids(compared):
            with open(store.object_path(oid), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == oid


def test_an_unchanged_payload_is_not_written_again(store: LocalStore, versions: list[dict]) -> None:
    data = torch_bytes(versions[0])
    previous = payload_oids(clean_manifest(store, data))
    before = {oid: os.stat(store.object_path(oid)).st_ino for oid in previous}
    with store.expecting(previous):
        again = clean_manifest(store, data)
    assert payload_oids(again) == previous
    assert {oid: os.stat(store.object_path(oid)).st_ino for oid in previous} == before
    assert not any(store.tmp_dir.iterdir())


def test_a_missing_or_corrupt_expected_object_is_ignored(
    store: LocalStore, versions: list[dict]
) -> None:
    data = torch_bytes(versions[0])
    previous = payload_oids(clean_manifest(store, data))
    for oid in previous:
        os.chmod(store.object_path(oid), 0o644)
        store.object_path(oid).write_bytes(b"not an object")
    with store.expecting(previous + ["0" * 64]):
        again = clean_manifest(store, data)
    assert payload_oids(again) == previous
    for oid in previous:
        with open(store.object_path(oid), "rb") as f:
            assert f.read() == b"not an object"  # an existing object is never rewritten


def test_a_truncated_new_version_loses_no_byte_while_comparing(
    store: LocalStore, versions: list[dict]
) -> None:
    """The file ends inside a tensor that so far equals the previous version's:
    those bytes are kept too.
    """
    base = torch_bytes(versions[0])
    previous = clean_manifest(store, base)
    biggest = max(previous.splices, key=lambda s: s.length)
    cut = base[: biggest.offset + biggest.length // 2]
    with store.expecting(payload_oids(previous)):
        manifest = clean_manifest(store, cut)
    assert manifest.format == "opaque"
    rebuilt = bytearray()
    prepare_smudge(manifest.render(), store, "model.pth").write(rebuilt.extend)
    assert bytes(rebuilt) == cut
