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
from helpers import loose_object, within

from git_theta_filter.clean import clean
from git_theta_filter.manifest import Manifest
from git_theta_filter.smudge import prepare_smudge
from git_theta_filter.store.local import COPY_CHUNK, LocalStore
from git_theta_filter.store.object_format import ObjectFormatError


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
def plain_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large objects are written in version 1, without block digests, as before them:
    such an expected object is compared by decoding it."""
    from git_theta_filter.store import encoded

    monkeypatch.setattr(encoded, "version_for", lambda canonical_size: encoded.VERSION_PLAIN)


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
            with open(loose_object(store, oid), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == oid


def test_an_unchanged_payload_is_not_written_again(store: LocalStore, versions: list[dict]) -> None:
    data = torch_bytes(versions[0])
    previous = payload_oids(clean_manifest(store, data))
    stored_files = sorted(store.theta_dir.rglob("*"))
    with store.expecting(previous):
        again = clean_manifest(store, data)
    assert payload_oids(again) == previous
    assert sorted(store.theta_dir.rglob("*")) == stored_files  # no new object, loose or packed
    assert not any(store.tmp_dir.iterdir())


@pytest.mark.parametrize("damage", ["header", "payload"])
def test_a_missing_or_corrupt_expected_object_is_ignored_and_replaced(
    store: LocalStore, versions: list[dict], damage: str
) -> None:
    """A re-add over damaged objects: the add gives the right ids, and the store then holds
    the good bytes again, so it can reproduce the file.
    """
    data = torch_bytes(versions[0])
    previous = payload_oids(clean_manifest(store, data))
    for oid in previous:
        path = loose_object(store, oid)
        os.chmod(path, 0o644)
        good = path.read_bytes()
        path.write_bytes(
            b"not an object" if damage == "header" else good[:-1] + bytes([good[-1] ^ 1])
        )
    with store.expecting(previous + ["0" * 64]):
        again = clean_manifest(store, data)
    assert payload_oids(again) == previous
    for oid in previous:
        store.verify(oid)
    rebuilt = bytearray()
    prepare_smudge(again.render(), store, "model.pth").write(rebuilt.extend)
    assert bytes(rebuilt) == data


@pytest.mark.parametrize("changed_blocks", [[0], [1], [1, 4], [5]])
def test_a_difference_found_behind_later_comparisons_keeps_every_byte(
    tmp_path: Path, store: LocalStore, changed_blocks: list[int]
) -> None:
    """A large payload is compared block by block on the workers, several blocks ahead of
    the result taken: when one differs, the blocks compared after it (equal or not) are
    stored too, and the object is the one a plain clean makes."""
    generator = torch.Generator().manual_seed(1)
    block = COPY_CHUNK // 4  # floats in a 1 MiB block
    base = {"w": torch.randn(6 * block + 10, generator=generator), "b": torch.ones(3)}
    changed = {"w": base["w"].clone(), "b": base["b"]}
    for index in changed_blocks:
        changed["w"][index * block + 123] += 1
    previous = payload_oids(clean_manifest(store, torch_bytes(base)))
    data = torch_bytes(changed)
    with store.expecting(previous):
        compared = clean_manifest(store, data)
    assert compared.render() == clean_manifest(LocalStore(tmp_path / "plain"), data).render()
    for oid in payload_oids(compared):
        store.verify(oid)
    rebuilt = bytearray()
    prepare_smudge(compared.render(), store, "model.pth").write(rebuilt.extend)
    assert bytes(rebuilt) == data


def test_comparing_decodes_each_block_once_and_a_changed_tensor_only_its_first(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch, plain_objects: None
) -> None:
    """Without digests, an unchanged payload decodes each block of its previous version
    once, however its chunks fall; one that changed from its first bytes decodes only
    its first block before it is stored (a delta's encoding reads its base on its own)."""
    from git_theta_filter.store.writing import ExpectedObject

    decoded: list[int] = []
    original = ExpectedObject._decode

    def counting(self, index: int):
        decoded.append(index)
        return original(self, index)

    monkeypatch.setattr(ExpectedObject, "_decode", counting)
    generator = torch.Generator().manual_seed(2)
    base = {"w": torch.randn(6 * (COPY_CHUNK // 4) + 10, generator=generator)}
    previous = payload_oids(clean_manifest(store, torch_bytes(base)))
    with store.expecting(previous):
        assert payload_oids(clean_manifest(store, torch_bytes(base))) == previous
    assert sorted(decoded) == list(range(7))
    decoded.clear()
    with store.expecting(previous):
        clean_manifest(store, torch_bytes({"w": base["w"] + 1}))
    assert decoded == [0]


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


def unblock(fifo: Path) -> None:
    """Give a FIFO a writer, so that a reader stuck in open() goes on (and sees EOF)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader waiting


@pytest.mark.parametrize("planted", ["fifo", "symlink-to-fifo-outside"])
def test_clean_never_opens_a_fifo_planted_as_an_expected_object(
    store: LocalStore, tmp_path: Path, planted: str
) -> None:
    """The previous version's object is swapped for a FIFO (or a link to one outside the
    store) after expecting() read its header: comparing with it must not block.
    """
    data = torch_bytes({"w": torch.arange(64, dtype=torch.float32)})
    previous = payload_oids(clean_manifest(store, data))
    (oid,) = previous
    path = loose_object(store, oid)
    fifo = path if planted == "fifo" else tmp_path / "outside-fifo"
    with store.expecting(previous):
        path.unlink()
        os.mkfifo(fifo)
        if planted != "fifo":
            path.symlink_to(fifo)
        try:
            again = within(20.0, lambda: clean_manifest(store, data))
        finally:
            unblock(fifo)
    assert payload_oids(again) == previous


@pytest.mark.parametrize("planted", ["fifo", "symlink", "directory"])
def test_open_object_refuses_anything_but_a_regular_file_without_blocking(
    store: LocalStore, tmp_path: Path, planted: str
) -> None:
    oid = store.write_bytes(b"abcd")
    path = loose_object(store, oid)
    good = tmp_path / "good-copy"
    good.write_bytes(path.read_bytes())
    path.unlink()
    {"fifo": os.mkfifo, "symlink": lambda p: p.symlink_to(good), "directory": os.mkdir}[planted](
        path
    )
    reason = "is a symbolic link" if planted == "symlink" else "is not a regular file"
    try:
        with pytest.raises(ObjectFormatError, match=reason):
            within(20.0, lambda: store.open_object(oid))
    finally:
        if planted == "fifo":
            unblock(path)


def safetensors_bytes(state: dict) -> bytes:
    from safetensors.torch import save

    return save(state)


@pytest.mark.parametrize("serialize", [torch_bytes, safetensors_bytes], ids=["torch", "st"])
def test_a_reordered_checkpoint_deltas_each_tensor_against_its_own_previous_version(
    store: LocalStore, serialize
) -> None:
    """Two tensors of one shape swapped, and one added between them (safetensors sorts
    them by name: only the addition): each changed tensor's delta base is its own previous
    version (by name), not the next of that shape in file order; the file still comes
    back byte for byte."""
    generator = torch.Generator().manual_seed(3)
    elements = (1 << 20) // 4 + 256  # over 1 MiB: stored encoded, so it can be a delta
    old = {name: torch.randn(elements, generator=generator) for name in ("a", "b")}
    previous = clean_manifest(store, serialize(old))
    trained = {name: tensor.clone() for name, tensor in old.items()}
    for tensor in trained.values():
        tensor[::100] += 1e-3
    new = {"b": trained["b"], "added": torch.randn(elements, generator=generator)}
    new["a"] = trained["a"]
    data = serialize(new)
    with store.expecting(payload_oids(previous), {t.name: t.oid for t in previous.tensors}):
        manifest = clean_manifest(store, data)
    old_oids = {t.name: t.oid for t in previous.tensors}
    for tensor in manifest.tensors:
        if tensor.name in old_oids:
            stored = store.open_stored(tensor.oid)
            assert stored is not None
            stored.close()
            assert stored.base_oid == old_oids[tensor.name], tensor.name
    rebuilt = bytearray()
    prepare_smudge(manifest.render(), store, "model.pth").write(rebuilt.extend)
    assert bytes(rebuilt) == data


def large_tensors(names: str, seed: int) -> dict:
    """Tensors of a little over one block each: compared as they stream in."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(COPY_CHUNK // 4 + 256, generator=generator) for name in names}


def test_the_next_large_tensor_s_first_block_is_decoded_ahead_and_only_once(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch, plain_objects: None
) -> None:
    """Without digests, taking a large tensor's previous version starts decoding the
    first block of the next large one in file order; the comparison of that tensor then
    uses the block decoded ahead instead of decoding it again."""
    from git_theta_filter.store.writing import ExpectedObject

    decoded: list[tuple[str, int]] = []
    decode, prepare = ExpectedObject._decode, ExpectedObject.prepare
    started_ahead: list[str] = []

    def counting(self, index: int):
        decoded.append((self.oid, index))
        return decode(self, index)

    def recording(self) -> None:
        started_ahead.append(self.oid)
        prepare(self)

    monkeypatch.setattr(ExpectedObject, "_decode", counting)
    monkeypatch.setattr(ExpectedObject, "prepare", recording)
    state = {**large_tensors("ab", seed=4), "bias": torch.ones(3), **large_tensors("c", seed=5)}
    previous = clean_manifest(store, torch_bytes(state))
    a, b, c = (next(t.oid for t in previous.tensors if t.name == n) for n in "abc")
    with store.expecting(payload_oids(previous), {t.name: t.oid for t in previous.tensors}):
        assert clean_manifest(store, torch_bytes(state)).splices == previous.splices
    assert started_ahead == [b, c]  # the small tensor between them is never decoded ahead
    assert sorted(decoded) == sorted((oid, index) for oid in (a, b, c) for index in (0, 1))


def test_an_object_decoded_ahead_that_no_tensor_takes_is_closed(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from git_theta_filter.store.writing import ExpectedObject

    closed: list[str] = []
    close = ExpectedObject.close

    def recording(self) -> None:
        closed.append(self.oid)
        close(self)

    monkeypatch.setattr(ExpectedObject, "close", recording)
    state = large_tensors("ab", seed=6)
    previous = clean_manifest(store, torch_bytes(state))
    b = next(t.oid for t in previous.tensors if t.name == "b")
    with store.expecting(payload_oids(previous), {t.name: t.oid for t in previous.tensors}):
        clean_manifest(store, torch_bytes({"a": state["a"]}))  # b was removed
        assert b not in closed
    assert b in closed
