"""Fuzz the restricted data.pkl scanner with damaged real pickles and with opcode soup.

The scanner either returns a structure or raises PickleScanError; nothing
else escapes, and nothing the pickle names is ever called (each case carries
a payload that would create a marker file if it ran).
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools

import torch
from attacks import torch_entries, torch_zip_bytes
from fuzz_settings import fuzz, scratch_dir
from hypothesis import given
from hypothesis import strategies as st

from git_theta_filter.formats.pickle_scan import PickleScan, PickleScanError, scan_pickle

MARKER = scratch_dir() / "pwned"


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def data_pkl(obj: object) -> bytes:
    return next(
        data for name, data in torch_entries(torch_zip_bytes(obj)) if name.endswith("data.pkl")
    )


SEED = data_pkl(
    {
        "model": {"w": torch.ones(2, 3), "v": torch.arange(6.0)[2:4]},
        "epoch": 3,
        "loss": 0.5,
        "payload": Payload(),
        "ids": list(range(12)),
    }
)
OPCODES = sorted({op.code.encode("latin-1") for op in pickletools.opcodes})


def scan(data: bytes) -> PickleScan | None:
    try:
        return scan_pickle(data)
    except PickleScanError:
        return None
    finally:
        assert not MARKER.exists(), "the scanner ran the pickle"


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(SEED)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "opcode", "delete", "duplicate"]))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "opcode":
            data[at : at + 1] = draw(st.sampled_from(OPCODES))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            end = min(len(data), at + draw(st.integers(1, 40)))
            data[at:at] = data[at:end]
    return bytes(data)


@fuzz(500)
@given(damaged())
def test_damaged_data_pkl_is_scanned_or_refused_and_never_run(data: bytes) -> None:
    result = scan(data)
    if result is not None:
        for name, ref in result.tensors:
            assert (
                name and ref.storage.key in result.storages
                if hasattr(ref, "storage")
                else ref.key in result.storages
            )


# Short programs over the real opcodes, with arguments that keep them mostly well-formed.
ARGS = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=4),
    st.sampled_from(
        [
            b"\x02",
            b"\x00\x00\x00\x00",
            b"os\nsystem\n",
            b"torch._utils\n_rebuild_tensor_v2\n",
            b"collections\nOrderedDict\n",
            b"\xff\xff\xff\x7f",
        ]
    ),
)
PROGRAMS = st.lists(st.tuples(st.sampled_from(OPCODES), ARGS), max_size=25).map(
    lambda ops: b"\x80\x02" + b"".join(code + arg for code, arg in ops) + b"."
)


@fuzz(800)
@given(PROGRAMS)
def test_opcode_soup_is_scanned_or_refused_and_never_run(data: bytes) -> None:
    scan(data)


def test_the_seed_would_run_its_payload_under_pickle() -> None:
    """Control: the payload is live, so the marker checks above mean something."""

    class Loader(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            return (
                super().find_class(module, name)
                if not module.startswith("torch")
                else (lambda *a, **k: None)
            )

        def persistent_load(self, pid):
            return None

    Loader(io.BytesIO(SEED)).load()
    assert MARKER.exists()
    MARKER.unlink()
