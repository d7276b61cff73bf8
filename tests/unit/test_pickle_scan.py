"""The restricted data.pkl scanner: structure out, never code run."""

from __future__ import annotations

import argparse
import builtins
import io
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from helpers import data_pkl, mlp_checkpoint

from git_theta_filter.formats import pickle_scan
from git_theta_filter.formats.pickle_scan import (
    MAX_METRIC_SEQUENCE,
    PickleScanError,
    StorageRef,
    TensorRef,
    scan_pickle,
)


def tensors_of(scan) -> dict[str, TensorRef | StorageRef]:
    return dict(scan.tensors)


def test_nested_checkpoint_structure() -> None:
    model = mlp_checkpoint(0, (4, 3, 2))
    optimizer_state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3, 4)}},
        "param_groups": [
            {"lr": 0.001, "betas": (0.9, 0.999), "amsgrad": False, "params": [0, 1, 2, 3]}
        ],
    }
    scan = scan_pickle(
        data_pkl(
            {
                "model": OrderedDict(model),
                "optimizer": optimizer_state,
                "epoch": 3,
                "loss": 0.25,
                "name": "run-1",
                "none": None,
            }
        )
    )
    tensors = tensors_of(scan)
    assert sorted(tensors) == sorted(
        [
            "model.0.weight",
            "model.0.bias",
            "model.2.weight",
            "model.2.bias",
            "optimizer.state.0.step",
            "optimizer.state.0.exp_avg",
        ]
    )
    weight = tensors["model.0.weight"]
    assert isinstance(weight, TensorRef)
    assert (weight.dtype, weight.shape, weight.stride, weight.offset) == ("F32", (3, 4), (4, 1), 0)
    assert weight.storage.nbytes == 48 and weight.is_whole_storage
    step = tensors["optimizer.state.0.step"]
    assert (step.dtype, step.shape, step.stride) == ("F32", (), ())
    assert step.is_whole_storage
    assert scan.scalars == {
        "epoch": 3,
        "loss": 0.25,
        "optimizer.param_groups.0.lr": 0.001,
        "optimizer.param_groups.0.betas.0": 0.9,
        "optimizer.param_groups.0.betas.1": 0.999,
        "optimizer.param_groups.0.amsgrad": False,
        "optimizer.param_groups.0.params.0": 0,
        "optimizer.param_groups.0.params.1": 1,
        "optimizer.param_groups.0.params.2": 2,
        "optimizer.param_groups.0.params.3": 3,
    }
    assert type(scan.scalars["optimizer.param_groups.0.amsgrad"]) is bool
    assert len(scan.storages) == 6
    # A plain checkpoint names nothing outside the allowlist.
    assert scan.foreign_globals == set()


@pytest.mark.parametrize(
    "dtype, name, itemsize",
    [
        (torch.bfloat16, "BF16", 2),
        (torch.float16, "F16", 2),
        (torch.int64, "I64", 8),
        (torch.bool, "BOOL", 1),
        (torch.float64, "F64", 8),
        (torch.int8, "I8", 1),
        (torch.complex128, "C128", 16),
    ],
)
def test_dtypes(dtype: torch.dtype, name: str, itemsize: int) -> None:
    scan = scan_pickle(
        data_pkl({"t": torch.zeros(2, 3, dtype=dtype), "s": torch.zeros((), dtype=dtype)})
    )
    t, s = tensors_of(scan)["t"], tensors_of(scan)["s"]
    assert (t.dtype, t.shape, t.storage.nbytes) == (name, (2, 3), 6 * itemsize)
    assert (s.dtype, s.shape, s.storage.nbytes) == (name, (), itemsize)


def test_tied_weights_share_one_storage_record() -> None:
    w = torch.randn(5, 4)
    scan = scan_pickle(data_pkl({"encoder.weight": w, "decoder.weight": w}))
    tensors = tensors_of(scan)
    assert tensors["encoder.weight"].storage is tensors["decoder.weight"].storage
    assert len(scan.storages) == 1


def test_views_keep_offset_and_stride() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    scan = scan_pickle(
        data_pkl({"base": base, "rows": base[1:3], "cols": base[:, 2:4], "t": base.t()})
    )
    tensors = tensors_of(scan)
    assert tensors["base"].is_whole_storage
    rows, cols, transposed = tensors["rows"], tensors["cols"], tensors["t"]
    assert (rows.offset, rows.shape, rows.stride, rows.is_whole_storage) == (
        6,
        (2, 6),
        (6, 1),
        False,
    )
    assert (cols.offset, cols.shape, cols.stride, cols.is_whole_storage) == (
        2,
        (4, 2),
        (6, 1),
        False,
    )
    assert (
        transposed.offset,
        transposed.shape,
        transposed.stride,
        transposed.is_whole_storage,
    ) == (0, (6, 4), (1, 6), False)
    assert len({id(t.storage) for t in tensors.values()}) == 1


def test_long_lists_are_ids_not_metrics() -> None:
    short = list(range(MAX_METRIC_SEQUENCE))
    long = list(range(MAX_METRIC_SEQUENCE + 1))
    scan = scan_pickle(
        pickle.dumps({"short": short, "long": long, "huge": 2**64, "flag": True}, protocol=2)
    )
    assert scan.scalars == {**{f"short.{i}": i for i in short}, "flag": True}


def test_root_tensor_and_name_collisions() -> None:
    assert list(tensors_of(scan_pickle(data_pkl(torch.ones(2))))) == ["."]
    # Keys 1 and "1" both give the name "1"; the second gets "#2".
    scan = scan_pickle(data_pkl({1: torch.ones(1), "1": torch.zeros(1)}))
    assert [name for name, _ in scan.tensors] == ["1", "1#2"]


def test_a_tensor_reaching_past_its_storage_is_refused() -> None:
    data = data_pkl({"v": torch.arange(10.0)[2:5]})
    # _rebuild_tensor_v2(storage, offset=2, size=(3,), stride=(1,)): push the offset out of bounds.
    assert b"K\x02" in data
    with pytest.raises(PickleScanError, match="tensor reaches past the end of storage 0"):
        scan_pickle(data.replace(b"K\x02", b"K\x08", 1))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not a pickle", "unreadable pickle"),
        (b"\x80\x02}q\x00", "unreadable pickle"),  # no STOP
        (b"\x80\x02(X\x01\x00\x00\x00aq\x00tQ.", "unknown persistent id"),
        (b"", "unreadable pickle"),
    ],
)
def test_malformed_pickles_raise_pickle_scan_error(data: bytes, message: str) -> None:
    with pytest.raises(PickleScanError, match=message):
        scan_pickle(data)


# -- data.pkl records the scanner refuses -------------------------------------------------


class Call:
    """Pickles as the call ``function(*args)``, which a crafted data.pkl may name."""

    def __init__(self, function, *args) -> None:
        self.function = function
        self.args = args

    def __reduce__(self):
        return self.function, self.args


class Storage:
    """Pickles as the persistent id ``pid``, which is how torch.save names a storage."""

    def __init__(self, *pid) -> None:
        self.pid = pid


class StoragePickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, Storage) else None


def crafted(obj: object) -> bytes:
    """Only written: these bytes are handed to the scanner, never loaded."""
    buffer = io.BytesIO()
    StoragePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def floats(numel: int, key: str = "0") -> Storage:
    return Storage("storage", torch.FloatStorage, key, "cpu", numel)


def rebuilt(storage: object, offset: object, size: object, stride: object) -> Call:
    return Call(torch._utils._rebuild_tensor_v2, storage, offset, size, stride)


def rebuilt_v3(storage: object, dtype: object) -> Call:
    """A tensor of 4 elements as torch writes one with a dtype of its own (v3)."""
    return Call(torch._utils._rebuild_tensor_v3, storage, 0, (4,), (1,), False, None, dtype)


REFUSED_RECORDS = {
    "a-tensor-of-a-string-not-a-storage": (
        rebuilt("0", 0, (4,), (1,)),
        "tensor rebuilt from something that is not a storage",
    ),
    "a-v3-tensor-whose-dtype-is-a-string": (
        rebuilt_v3(floats(4), "F32"),
        "bad _rebuild_tensor_v3 arguments",
    ),
    "a-size-that-is-an-int": (
        rebuilt(floats(4), 0, 4, (1,)),
        "tensor with a bad size or stride",
    ),
    "a-negative-stride": (
        rebuilt(floats(4), 0, (4,), (-1,)),
        "tensor with a bad offset, size or stride",
    ),
    "a-stride-of-another-rank": (
        rebuilt(floats(4), 0, (2, 2), (1,)),
        "tensor with a bad offset, size or stride",
    ),
    "a-storage-type-that-is-a-string": (
        Storage("storage", "FloatStorage", "0", "cpu", 4),
        "storage '0' has an unknown type",
    ),
    "a-storage-of-minus-one-element": (floats(-1), "storage with a bad key or size"),
    "a-storage-key-that-is-an-int": (
        Storage("storage", torch.FloatStorage, 0, "cpu", 4),
        "storage with a bad key or size",
    ),
    "one-storage-named-with-two-sizes": (
        {"a": rebuilt(floats(4), 0, (4,), (1,)), "b": rebuilt(floats(8), 0, (8,), (1,))},
        "storage '0' is named with two sizes",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED_RECORDS))
def test_a_crafted_tensor_or_storage_record_is_refused_by_name(case: str) -> None:
    obj, message = REFUSED_RECORDS[case]
    with pytest.raises(PickleScanError, match=message):
        scan_pickle(crafted(obj))


def test_the_crafted_records_are_read_when_they_are_well_formed() -> None:
    """The builders above make records the scanner reads: each refusal is the one flaw."""
    scan = scan_pickle(
        crafted(
            {
                "v2": rebuilt(floats(4), 0, (2, 2), (2, 1)),
                "v3": rebuilt_v3(floats(4), torch.float32),
            }
        )
    )
    tensors = tensors_of(scan)
    assert (tensors["v2"].shape, tensors["v3"].dtype) == ((2, 2), "F32")
    assert tensors["v2"].storage is tensors["v3"].storage


def test_a_graph_of_more_objects_than_the_limit_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Reaching the real limit, 5 million, takes a 10 MB pickle and seconds of walking;
    # the walk counts objects the same way against 10.
    monkeypatch.setattr(pickle_scan, "MAX_NODES", 10)
    scan_pickle(pickle.dumps([0.5] * 9, protocol=2))  # the list and its 9 items
    with pytest.raises(PickleScanError, match="more than 10 objects"):
        scan_pickle(pickle.dumps([0.5] * 10, protocol=2))


# -- code that would run on load --------------------------------------------------------


class RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class RunsPython:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (builtins.exec, (self.code,))


class RunsEval:
    def __init__(self, expression: str) -> None:
        self.expression = expression

    def __reduce__(self):
        return (builtins.eval, (self.expression,))


HOSTILE_CASES = [
    "os.system via __reduce__",
    "builtins.exec via __reduce__",
    "builtins.eval, protocol 4",
    "INST opcode, protocol 0",
    "getattr(__import__('os'), 'system')",
]

# What the scanner must make of each: the globals it records and the scalars it keeps
# beside them, or None where it must refuse the pickle (calling the result of a foreign
# global cannot be walked without running it).
SCANNED: dict[str, tuple[set[str], dict[str, float]] | None] = {
    "os.system via __reduce__": ({"posix.system"}, {"w.0": 1.0}),
    "builtins.exec via __reduce__": ({"builtins.exec"}, {}),
    "builtins.eval, protocol 4": ({"builtins.eval"}, {}),
    "INST opcode, protocol 0": ({"os.system"}, {}),
    "getattr(__import__('os'), 'system')": None,
}


def hostile_pickles(marker: Path) -> dict[str, bytes]:
    touch = f"open({str(marker)!r}, 'w').write('pwned')"
    chain = (
        b"\x80\x02cbuiltins\ngetattr\ncbuiltins\n__import__\nX\x02\x00\x00\x00os\x85R"
        + b"X\x06\x00\x00\x00system\x86R"
        + b"X"
        + len(f"touch {marker}").to_bytes(4, "little")
        + f"touch {marker}".encode()
        + b"\x85R."
    )
    return {
        "os.system via __reduce__": pickle.dumps(
            {"w": [1.0], "evil": RunsShell(f"touch {marker}")}, protocol=2
        ),
        "builtins.exec via __reduce__": pickle.dumps({"evil": RunsPython(touch)}, protocol=2),
        "builtins.eval, protocol 4": pickle.dumps({"evil": RunsEval(touch)}, protocol=4),
        "INST opcode, protocol 0": f"(S'touch {marker}'\nios\nsystem\n.".encode(),
        "getattr(__import__('os'), 'system')": chain,
    }


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_scanner_never_runs_the_pickle(tmp_path: Path, case: str) -> None:
    marker = tmp_path / "pwned"
    data = hostile_pickles(marker)[case]
    try:
        scan = scan_pickle(data)
    except PickleScanError as exc:
        assert SCANNED[case] is None, f"{case}: refused ({exc}), but it can be scanned"
        assert "not callable" in str(exc)
        scan = None
    assert not marker.exists(), f"{case}: scanning ran the payload"
    if scan is not None:
        # Recorded exactly: a scanner that refused or emptied everything would fail here.
        assert (scan.foreign_globals, scan.scalars) == SCANNED[case], case
    # Control: the same bytes do run code under pickle.loads, so the check above means something.
    subprocess.run(
        [sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
        input=data,
        capture_output=True,
    )
    assert marker.exists(), f"{case}: the hostile pickle is not live, so this test proves nothing"


class Namespace:
    """Stands for argparse.Namespace-like hyper-parameter objects in Lightning checkpoints."""


def test_foreign_objects_are_inert_placeholders_that_keep_their_data() -> None:
    hparams = Namespace()
    hparams.lr = 0.1
    hparams.layers = 2
    scan = scan_pickle(pickle.dumps({"hparams": hparams, "w": torch.ones(1).tolist()}, protocol=2))
    assert scan.foreign_globals == {f"{Namespace.__module__}.Namespace"}
    assert scan.scalars == {"hparams.lr": 0.1, "hparams.layers": 2, "w.0": 1.0}


class AttributeDict(dict):
    """Like Lightning's AttributeDict: a dict subclass, pickled with NEWOBJ then SETITEMS."""


def test_dict_subclasses_and_namespaces_from_newobj_are_walked() -> None:
    checkpoint = {
        "state_dict": {"w": torch.ones(2)},
        "hyper_parameters": AttributeDict(lr=0.01, depth=3),
        "args": argparse.Namespace(batch_size=32, dropout=0.5),
    }
    scan = scan_pickle(data_pkl(checkpoint))
    assert list(tensors_of(scan)) == ["state_dict.w"]
    assert scan.scalars == {
        "hyper_parameters.lr": 0.01,
        "hyper_parameters.depth": 3,
        "args.batch_size": 32,
        "args.dropout": 0.5,
    }
    assert scan.foreign_globals == {
        f"{AttributeDict.__module__}.AttributeDict",
        "argparse.Namespace",
    }
