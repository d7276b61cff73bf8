"""Read the structure of a torch ``data.pkl`` without executing it.

``pickle.load`` would call whatever the pickle names, which is how a model file
runs an attacker's code. Here an unpickler resolves every
global through :meth:`_StructureUnpickler.find_class`, which only ever returns
our own inert stand-ins, and ``persistent_load`` returns a record of the
storage instead of loading it. The result is the object graph made of plain
containers, :class:`TensorRef`/:class:`StorageRef` records and
:class:`ForeignObject` placeholders, from which we take:

* tensors, named by their key path (``model.fc1.weight``);
* storages: key, dtype and size in bytes;
* scalar leaves (int, float, bool) as metrics;
* every global the pickle names that is not on the allowlist.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..dtypes import TORCH_DTYPE_NAMES, TORCH_STORAGE_TYPES, dtype_by_name
from ..errors import ThetaError
from ..manifest import MAX_DIMS, MAX_SIZE
from ..units import MAX_INTEGER_DIGITS, bounded_integer_digits
from .pickle_common import UNREAD, load_common

__all__ = [
    "PickleScanError",
    "StorageRef",
    "TensorRef",
    "ForeignObject",
    "PickleScan",
    "scan_pickle",
    "ALLOWED_GLOBALS",
]

# A list of more scalars than this is an id list (e.g. optimizer param ids), not metrics.
MAX_METRIC_SEQUENCE = 8
# An integer of larger magnitude is no metric (a seed, a hash) and is not recorded.
MAX_METRIC_INTEGER = 2**63
# Bounds the walk over a hostile object graph built from a small pickle.
MAX_NODES = 5_000_000
# The recorded names go into the manifest, which holds at most 32 MiB.
MAX_NAME_CHARACTERS = 32 << 20
# Real checkpoints nest a few levels (a Lightning checkpoint's optimizer state, about 6);
# a pickle nested deeper is refused as soon as the walk gets there.
MAX_DEPTH = 1000


class PickleScanError(ThetaError):
    """data.pkl could not be read as a torch checkpoint structure."""


@dataclass(eq=False)
class StorageRef:
    """One ``data/<key>`` record as data.pkl describes it."""

    key: str
    dtype: str
    nbytes: int
    untyped: bool


class TensorRef:
    """A tensor as data.pkl rebuilds it: a view of ``storage``.

    A plain class with slots, made in a third of a dataclass's time: a checkpoint may
    hold hundreds of thousands of tensors.
    """

    __slots__ = ("storage", "dtype", "offset", "shape", "stride", "is_whole_storage")

    def __init__(
        self,
        storage: StorageRef,
        dtype: str,
        offset: int,
        shape: tuple[int, ...],
        stride: tuple[int, ...],
    ) -> None:
        self.storage = storage
        self.dtype = dtype
        self.offset = offset
        self.shape = shape
        self.stride = stride
        expected_stride = []
        numel = 1
        for dim in reversed(shape):
            expected_stride.append(numel)
            numel *= dim
        contiguous = tuple(reversed(expected_stride)) == stride or numel <= 1
        nbytes = numel * dtype_by_name(dtype).itemsize
        # True when the tensor is exactly its storage's bytes, in order. Set once, when
        # it is made: a clean asks it three times of each of thousands of tensors.
        self.is_whole_storage: bool = offset == 0 and contiguous and nbytes == storage.nbytes


class ForeignObject:
    """Stands in for anything built from a global that is not on the allowlist."""

    def __init__(self, qualname: str, args: tuple = ()) -> None:
        self.qualname = qualname
        self.args = args
        self.state: Any = None
        self.items: dict = {}
        self.list: list = []

    # The pickle opcodes BUILD, SETITEM(S) and APPEND(S) call these.
    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list.append(value)

    def extend(self, values: Any) -> None:
        self.list.extend(values)


def _foreign_class(qualname: str) -> type:
    """A fresh inert class per global, since NEWOBJ requires a real class."""

    def new(cls, *args: Any, **kwargs: Any) -> ForeignObject:
        obj = ForeignObject.__new__(cls)
        # NEWOBJ (protocol 2's copyreg.__newobj__, e.g. argparse.Namespace or a
        # dict subclass) calls __new__ without __init__; the placeholder must be
        # complete either way, or BUILD/SETITEMS and the walk fail on it.
        ForeignObject.__init__(obj, qualname, args)
        return obj

    def init(self, *args: Any, **kwargs: Any) -> None:
        ForeignObject.__init__(self, qualname, args)

    return type(
        "Foreign", (ForeignObject,), {"__new__": new, "__init__": init, "__module__": __name__}
    )


@dataclass(frozen=True)
class _DType:
    name: str


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise PickleScanError("tensor rebuilt from something that is not a storage")
    return _tensor(storage, storage.dtype, offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    _grad: Any,
    _hooks: Any,
    dtype: Any,
    *_rest: Any,
) -> TensorRef:
    if not isinstance(storage, StorageRef) or not isinstance(dtype, _DType):
        raise PickleScanError("bad _rebuild_tensor_v3 arguments")
    return _tensor(storage, dtype.name, offset, size, stride)


def _tensor(storage: StorageRef, dtype: str, offset: Any, size: Any, stride: Any) -> TensorRef:
    if (
        not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list)))
        or len(size) > MAX_DIMS
    ):
        # The product of a million sizes would take hours to compute.
        raise PickleScanError(f"tensor with a bad size or stride (at most {MAX_DIMS} dimensions)")
    ints = (offset, *size, *stride)
    if not all(type(v) is int and v >= 0 for v in ints) or len(size) != len(stride):
        raise PickleScanError("tensor with a bad offset, size or stride")
    # Before they are multiplied: two integers of 100 MiB each (LONG4) multiply in hours.
    if any(v > MAX_SIZE for v in ints):
        raise PickleScanError("tensor with an offset, size or stride over 2**60")
    tensor = TensorRef(storage, dtype, offset, tuple(size), tuple(stride))
    if not tensor.is_whole_storage:
        itemsize = dtype_by_name(dtype).itemsize
        last = (
            offset + sum((d - 1) * s for d, s in zip(size, stride, strict=True))
            if math.prod(size)
            else -1
        )
        if (last + 1) * itemsize > storage.nbytes:
            raise PickleScanError(f"tensor reaches past the end of storage {storage.key}")
    return tensor


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    return data


# The globals a plain state_dict checkpoint uses, mapped to inert equivalents.
ALLOWED_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    **{f"torch.{name}": _DType(dtype) for name, dtype in TORCH_DTYPE_NAMES.items()},
    **{f"torch.{name}": ("storage-type", dtype) for name, dtype in TORCH_STORAGE_TYPES.items()},
    "torch.storage.UntypedStorage": ("storage-type", "U8"),
}


class _Hooks:
    """What a pickle's globals and persistent ids become, and the record of both."""

    def __init__(self) -> None:
        self.storages: dict[str, StorageRef] = {}
        self.foreign_globals: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        # torch writes protocol 2, whose pickles may name Python 2 modules
        # (``__builtin__.eval``). pickle.load maps them to what it would really
        # call (``builtins.eval``); so do we, for the allowlist and the report.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        if qualname in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[qualname]
        self.foreign_globals.add(qualname)
        return _foreign_class(qualname)

    def persistent_load(self, pid: Any) -> StorageRef:
        # torch: ("storage", <storage type>, "<key>", "<location>", <numel>)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise PickleScanError(f"unknown persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not (isinstance(storage_type, tuple) and storage_type[0] == "storage-type"):
            raise PickleScanError(f"storage {key!r} has an unknown type")
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise PickleScanError("storage with a bad key or size")
        dtype = storage_type[1]
        nbytes = numel * dtype_by_name(dtype).itemsize
        known = self.storages.get(key)
        if known is not None:
            if known.nbytes != nbytes:
                raise PickleScanError(f"storage {key!r} is named with two sizes")
            return known
        ref = StorageRef(
            key,
            dtype,
            nbytes,
            untyped=storage_type is ALLOWED_GLOBALS["torch.storage.UntypedStorage"],
        )
        self.storages[key] = ref
        return ref


# The pure-Python unpickler, not the C one: the C unpickler sizes its memo as
# an array reaching the largest index a PUT names, so a 4-byte LONG_BINPUT
# index in a 400-byte pickle made it allocate (and zero) gigabytes. The Python
# one keeps the memo in a dict. It reads what the faster loop of
# pickle_common.py leaves to it: the opcodes torch does not write for a
# state_dict, and pickles that are not valid.
class _StructureUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    def __init__(self, data: bytes, hooks: _Hooks) -> None:
        super().__init__(io.BytesIO(data))
        self._hooks = hooks

    def find_class(self, module: str, name: str) -> Any:
        return self._hooks.find_class(module, name)

    def persistent_load(self, pid: Any) -> StorageRef:
        return self._hooks.persistent_load(pid)


@dataclass
class PickleScan:
    tensors: list[tuple[str, TensorRef | StorageRef]] = field(default_factory=list)
    storages: dict[str, StorageRef] = field(default_factory=dict)
    scalars: dict[str, int | float | bool] = field(default_factory=dict)
    foreign_globals: set[str] = field(default_factory=set)


def _key_text(key: Any) -> str | None:
    if isinstance(key, (str, int)) and not isinstance(key, bool):
        try:
            return str(key)
        except ValueError:  # an integer over the digits scan_pickle allows: n² time
            raise PickleScanError(
                f"a key that is an integer of more than {MAX_INTEGER_DIGITS} digits"
            ) from None
    return None


def _children(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            text = _key_text(key)
            if text is not None:
                yield text, value
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield str(index), value
    elif isinstance(node, ForeignObject):
        # Hyper-parameters and module attributes live in the state, e.g. a
        # Lightning checkpoint's argparse.Namespace.
        yield from _children(node.items)
        for index, value in enumerate(node.list):
            yield str(index), value
        if isinstance(node.state, dict):
            yield from _children(node.state)
        elif isinstance(node.state, tuple):
            for part in node.state:
                if isinstance(part, dict):
                    yield from _children(part)
        for index, value in enumerate(node.args):
            yield f"args.{index}", value


# A key path as a chain of (parent, key) links, joined into a name only for the
# tensors and scalars that are recorded: building every node's full name would cost
# time in proportion to its depth, and a pickle of a million nested lists would
# take hours (the depth squared).
_Path = tuple[Any, str] | None


def _join(path: _Path) -> str:
    keys = []
    while path is not None:
        path, key = path
        keys.append(key)
    return ".".join(reversed(keys))


def _walk(root: Any, scan: PickleScan) -> None:
    """Depth-first over the graph; a shared container is entered once.

    Runs in time linear in the number of nodes plus the length of the names it
    records, which is bounded by :data:`MAX_NAME_CHARACTERS`; refuses a graph
    nested more than :data:`MAX_DEPTH` levels deep.
    """
    seen: set[int] = set()
    used_names: set[str] = set()
    stack: list[tuple[_Path, Any, bool, int]] = [(None, root, False, 0)]
    nodes = 0
    name_characters = 0

    def unique(path: _Path) -> str:
        nonlocal name_characters
        name = _join(path) or "."
        name_characters += len(name)
        if name_characters > MAX_NAME_CHARACTERS:
            raise PickleScanError(f"names of more than {MAX_NAME_CHARACTERS} characters in all")
        candidate, n = name, 1
        while candidate in used_names:
            n += 1
            candidate = f"{name}#{n}"
        used_names.add(candidate)
        return candidate

    while stack:
        path, node, in_long_sequence, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise PickleScanError(f"more than {MAX_NODES} objects")
        if isinstance(node, (TensorRef, StorageRef)):
            scan.tensors.append((unique(path), node))
        elif isinstance(node, bool) or (isinstance(node, (int, float)) and not in_long_sequence):
            if path is not None and not (isinstance(node, int) and abs(node) > MAX_METRIC_INTEGER):
                scan.scalars[unique(path)] = node
        elif isinstance(node, (dict, list, tuple, ForeignObject)):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if depth == MAX_DEPTH:
                raise PickleScanError(f"nested more than {MAX_DEPTH} levels deep")
            long_sequence = isinstance(node, (list, tuple)) and len(node) > MAX_METRIC_SEQUENCE
            children = list(_children(node))
            for key, child in reversed(children):
                stack.append(((path, key), child, long_sequence, depth + 1))


def scan_pickle(data: bytes) -> PickleScan:
    """The structure of a torch data.pkl; raises :class:`PickleScanError` if it is not one."""
    hooks = _Hooks()
    root = load_common(data, hooks.find_class, hooks.persistent_load)
    if root is UNREAD:
        hooks = _Hooks()  # nothing the fast loop recorded counts
        root = _unpickle(data, hooks)
    scan = PickleScan(storages=hooks.storages, foreign_globals=hooks.foreign_globals)
    with bounded_integer_digits():  # a key that is an integer is named by its digits
        _walk(root, scan)
    return scan


def _unpickle(data: bytes, hooks: _Hooks) -> Any:
    try:
        # The text opcodes INT, LONG, GET and PUT convert decimal digits: n² time each.
        with bounded_integer_digits():
            return _StructureUnpickler(data, hooks).load()
    except PickleScanError:
        raise
    except RecursionError:
        raise PickleScanError("nested too deeply") from None
    except Exception as exc:  # any malformed pickle: it is data, not our bug
        raise PickleScanError(f"unreadable pickle ({type(exc).__name__}: {exc})") from None
