"""Fuzz the clean's comparison of a new version with the previous one (the staged
manifest, ``expecting_previous``; docs/store.md, "Encoded objects", rules 5 and 7).

A history of versions of a model, each made from the one before it as training and
editing make them (bytes of large tensors changed anywhere, a tensor added, removed
or reshaped), sometimes with a stored object damaged in between: each version,
cleaned expecting the one before, gives the manifest a clean into an empty store
gives, and smudges back byte-exact; at the end every object the last version names
verifies. Whether a payload is compared by digest or decoded, a delta is written or
not, the ids are the bytes'.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import torch
from attacks import torch_zip_bytes
from fuzz_settings import fuzz, scratch_dir
from helpers import flip_a_raw_plane_byte
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_save

from git_theta_filter.clean import clean, expecting_previous
from git_theta_filter.manifest import Manifest
from git_theta_filter.smudge import prepare_smudge
from git_theta_filter.store.encoded import BLOCK_SIZE
from git_theta_filter.store.local import LocalStore

SCRATCH = scratch_dir()
_RUNS = itertools.count()  # a directory of its own for each example
# Large tensors (compared as they stream in, over one block) and a small one (compared whole).
ELEMENTS = st.integers(BLOCK_SIZE // 4 + 1, 5 * BLOCK_SIZE // 8)
SMALL = 100


@st.composite
def histories(draw: st.DrawFn) -> tuple[str, list[dict[str, np.ndarray]], int | None]:
    """(format, versions, the version after which a stored object is damaged, or None)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    first = {name: rng.standard_normal(draw(ELEMENTS), dtype=np.float32) for name in "ab"}
    first["small"] = rng.standard_normal(SMALL, dtype=np.float32)
    versions = [first]
    for _ in range(draw(st.integers(1, 3))):
        state = {name: tensor.copy() for name, tensor in versions[-1].items()}
        for tensor in state.values():
            raw = tensor.view(np.uint8).reshape(-1)  # a view: the tensor's own bytes
            for position in draw(st.lists(st.integers(0, raw.size - 1), max_size=3)):
                raw[position] ^= draw(st.integers(1, 255))
        edit = draw(st.sampled_from(["none", "add", "remove", "reshape"]))
        if edit == "add":
            state[f"c{len(versions)}"] = rng.standard_normal(draw(ELEMENTS), dtype=np.float32)
        elif edit == "remove" and len(state) > 1:
            del state[draw(st.sampled_from(sorted(state)))]
        elif edit == "reshape":
            name = draw(st.sampled_from(sorted(state)))
            if state[name].size % 2 == 0:
                state[name] = state[name].reshape(2, -1)
        versions.append(state)
    damaged = draw(st.one_of(st.none(), st.integers(0, len(versions) - 2)))
    return draw(st.sampled_from(["torch", "safetensors"])), versions, damaged


def serialize(format_: str, state: dict[str, np.ndarray]) -> bytes:
    tensors = {name: torch.from_numpy(array) for name, array in state.items()}
    return torch_zip_bytes(tensors) if format_ == "torch" else safetensors_save(tensors)


def clean_into(store: LocalStore, data: bytes, previous: Manifest | None) -> Manifest:
    with expecting_previous(store, previous):
        return Manifest.parse(clean(io.BytesIO(data), store, "model.pth", warn=lambda _m: None))


def damage_one_object(store: LocalStore, manifest: Manifest) -> None:
    """Flip a raw plane byte of the first encoded, loose object it names that has a raw
    plane in its first block (a delta's planes may all be taken from its base)."""
    for tensor in manifest.tensors:
        stored = store.open_stored(tensor.oid)
        if stored is None:
            continue
        with stored:
            encoded = stored.encoded is not None and stored.owns_file
        if encoded:
            try:
                flip_a_raw_plane_byte(store, tensor.oid)
            except AssertionError:  # no raw plane
                continue
            return


@fuzz(ci_examples=12)
@given(histories())
def test_each_version_cleaned_expecting_the_last_gives_a_plain_clean_s_manifest(
    history: tuple[str, list[dict[str, np.ndarray]], int | None],
) -> None:
    format_, versions, damaged = history
    run = SCRATCH / f"run-{next(_RUNS)}"
    store = LocalStore(run / "theta")
    previous: Manifest | None = None
    for number, state in enumerate(versions):
        data = serialize(format_, state)
        manifest = clean_into(store, data, previous)
        plain = clean_into(LocalStore(run / f"plain-{number}"), data, None)
        assert manifest.render() == plain.render(), number
        rebuilt = bytearray()
        prepare_smudge(manifest.render(), store, "model.pth").write(rebuilt.extend)
        assert bytes(rebuilt) == data, number
        if number == damaged:
            damage_one_object(store, manifest)
        previous = manifest
    assert previous is not None
    for oid in previous.object_ids():
        store.verify(oid)
