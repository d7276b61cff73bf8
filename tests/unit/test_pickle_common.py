"""The scanner's fast loop over torch's opcodes agrees with pickle._Unpickler wherever it reads."""

from __future__ import annotations

import argparse
import pickle
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import data_pkl

from git_theta_filter.formats.pickle_common import UNREAD, load_common
from git_theta_filter.formats.pickle_scan import (
    PickleScan,
    PickleScanError,
    StorageRef,
    _Hooks,
    _unpickle,
    _walk,
    scan_pickle,
)


def fast(data: bytes, hooks: _Hooks) -> Any:
    return load_common(data, hooks.find_class, hooks.persistent_load)


def described(data: bytes, read: Callable[[bytes, _Hooks], Any]) -> tuple | None:
    """Everything a clean takes from the scan, in order; None if ``read`` leaves it unread."""
    hooks = _Hooks()
    root = read(data, hooks)
    if root is UNREAD:
        return None
    scan = PickleScan(storages=hooks.storages, foreign_globals=hooks.foreign_globals)
    try:
        _walk(root, scan)
    except PickleScanError as exc:
        return ("refused by the walk", str(exc))
    tensors = []
    for name, ref in scan.tensors:
        if isinstance(ref, StorageRef):
            tensors.append((name, ref.key, ref.dtype, ref.nbytes))
        else:
            storage = (ref.storage.key, ref.storage.dtype, ref.storage.nbytes)
            view = (ref.dtype, ref.offset, ref.shape, ref.stride, ref.is_whole_storage)
            tensors.append((name, storage, view))
    storages = [(s.key, s.dtype, s.nbytes, s.untyped) for s in scan.storages.values()]
    scalars = [(name, type(value), repr(value)) for name, value in scan.scalars.items()]
    return tensors, storages, scalars, sorted(scan.foreign_globals)


CHECKPOINTS = {
    "many small tensors": {f"t{i}": torch.randn(8) for i in range(300)},
    "a state_dict": OrderedDict(
        (f"layer{i}.{kind}", torch.ones(3, 2) if kind == "weight" else torch.zeros(3))
        for i in range(3)
        for kind in ("weight", "bias")
    ),
    "an optimizer state": {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3, 4)}},
        "param_groups": [
            {
                "lr": 0.001,
                "betas": (0.9, 0.999),
                "eps": 1e-8,
                "amsgrad": False,
                "maximize": True,
                "foreach": None,
                "params": list(range(12)),
            }
        ],
    },
    "views and tied weights": {
        "base": (base := torch.arange(24.0).reshape(4, 6)),
        "rows": base[1:3],
        "columns": base[:, 2],
        "transposed": base.t(),
        "tied": base,
    },
    "numbers of every width": {
        "byte": 7,
        "short": 4000,
        "negative": -5,
        "int": 70000,
        "long": 2**40,
        "huge": -(2**70),
        "float": 0.25,
        "name": "run-1",
        "unicode": "naïve \ud800",
        1: "an int key",
        (1, 2): "a tuple key",
    },
    "dtypes": {"half": torch.ones(2, dtype=torch.float16), "bool": torch.ones(2, dtype=bool)},
    "a tensor as the root": torch.ones(2),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
def test_the_loop_reads_what_torch_saves_as_the_unpickler_does(case: str) -> None:
    data = data_pkl(CHECKPOINTS[case])
    expected = described(data, _unpickle)
    assert expected is not None
    # Not left to the unpickler: then this test would compare the unpickler with itself.
    assert described(data, fast) == expected


def test_other_opcodes_are_left_to_the_unpickler() -> None:
    namespace = argparse.Namespace(lr=0.1)  # NEWOBJ and BUILD
    data = data_pkl({"w": torch.ones(2), "args": namespace})
    assert load_common(data, _Hooks().find_class, _Hooks().persistent_load) is UNREAD
    assert scan_pickle(data).scalars == {"args.lr": 0.1}
    protocol_4 = pickle.dumps({"lr": 0.5}, protocol=4)  # FRAME, MEMOIZE
    assert load_common(protocol_4, _Hooks().find_class, _Hooks().persistent_load) is UNREAD
    assert scan_pickle(protocol_4).scalars == {"lr": 0.5}


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x80\x09}.", "unsupported pickle protocol: 9"),
        (b"\x80\x02}q\x00", "unreadable pickle"),  # no STOP
        (b"\x80\x02X\x10\x00\x00\x00abc.", "unreadable pickle"),  # a string past the end
        (b"\x80\x02h\x05.", "Memo value not found at index 5"),
        (b"\x80\x02]}e.", "unreadable pickle"),  # APPENDS without a MARK
        (b"\x80\x02(]K\x01K\x02e.", "unreadable pickle"),  # APPENDS onto an int
        (b"\x80\x02K\x01)R.", "not callable"),
    ],
)
def test_what_the_loop_cannot_read_is_refused_by_the_unpickler(data: bytes, message: str) -> None:
    assert load_common(data, _Hooks().find_class, _Hooks().persistent_load) is UNREAD
    with pytest.raises(PickleScanError, match=message):
        scan_pickle(data)


SEED = data_pkl(
    {
        "model": {"w": torch.ones(2, 3), "v": torch.arange(6.0)[2:4]},
        "epoch": 3,
        "loss": 0.5,
        "ids": list(range(12)),
        "flags": [True, None, -7, 2**40],
    }
)


def damaged_seeds() -> list[bytes]:
    """Every byte of SEED replaced by a few values, and each prefix of it."""
    cases = []
    for at in range(len(SEED)):
        for value in {SEED[at] ^ 1, SEED[at] ^ 0x80, 0, 0x28, 0x2E}:
            cases.append(SEED[:at] + bytes([value]) + SEED[at + 1 :])
        cases.append(SEED[:at])
    return cases


def test_where_the_loop_reads_a_damaged_pickle_the_unpickler_reads_the_same() -> None:
    read = 0
    for data in damaged_seeds():
        got = described(data, fast)
        if got is None:
            continue
        read += 1
        try:
            expected = described(data, _unpickle)
        except PickleScanError as exc:
            raise AssertionError(
                f"the loop read {data!r}, which the unpickler refuses: {exc}"
            ) from None
        assert got == expected, data
    assert read > 100  # the comparison means something
