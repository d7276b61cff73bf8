"""A tensor's elements, read from the store chunk by chunk and decoded to float64.

Objects are read through a read-only memory map, so a tensor of any size costs
one chunk of working memory. A tensor line with ``offset=``/``stride=`` is a
view of its object's flat payload (docs/manifest.md); it is mapped with
:func:`numpy.lib.stride_tricks.as_strided` after its extent has been checked
against the payload, and walked in row-major order.

bf16 and the float8 types have no numpy dtype: bf16 is decoded from its bits
(the upper half of a float32), float8 through a 256-entry table. No torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .dtypes import dtype_by_name
from .errors import ThetaError
from .manifest import TensorEntry
from .store.local import LocalStore

__all__ = [
    "CHUNK_ELEMENTS",
    "Kind",
    "ElementType",
    "element_type",
    "TensorExtentError",
    "open_elements",
    "iter_chunks",
    "iter_chunk_pairs",
    "float8_table",
]

# 64 Ki elements: a float64 chunk (512 KiB) and its temporaries stay in cache,
# which measured faster than larger chunks.
CHUNK_ELEMENTS = 1 << 16


class Kind(Enum):
    """What statistics a dtype supports."""

    FLOAT = "float"  # norms and deltas
    INTEGER = "integer"  # norms; deltas report changed/unchanged only
    OTHER = "other"  # complex and quantized: changed/unchanged only


class TensorExtentError(ThetaError):
    """A tensor line that reaches past the payload of its object."""

    def __init__(self, name: str, oid: str) -> None:
        super().__init__(f"tensor {name!r} reaches past the end of object {oid}")
        self.tensor = name
        self.oid = oid


def float8_table(exponent_bits: int, mantissa_bits: int, bias: int, special: str) -> np.ndarray:
    """The float64 value of each of the 256 bytes of a float8 format.

    ``special`` names where the format keeps its non-finite values: ``ieee``
    (an all-ones exponent is inf or NaN), ``fn`` (only all-ones exponent and
    mantissa is NaN; no inf), ``fnuz`` (0x80, negative zero, is the only NaN)
    or ``e8m0`` (unsigned powers of two; 0xFF is NaN).
    """
    table = np.empty(256, dtype=np.float64)
    top_exponent = (1 << exponent_bits) - 1
    for byte in range(256):
        sign_bit = (byte >> (exponent_bits + mantissa_bits)) & 1 if special != "e8m0" else 0
        exponent = (byte >> mantissa_bits) & top_exponent
        mantissa = byte & ((1 << mantissa_bits) - 1)
        sign = -1.0 if sign_bit else 1.0
        if special == "e8m0":
            value = math.nan if byte == 0xFF else math.ldexp(1.0, byte - bias)
        elif special == "fnuz" and byte == 0x80:
            value = math.nan
        elif special == "ieee" and exponent == top_exponent:
            value = sign * math.inf if mantissa == 0 else math.nan
        elif special == "fn" and exponent == top_exponent and mantissa == (1 << mantissa_bits) - 1:
            value = math.nan
        elif exponent == 0:
            value = sign * math.ldexp(mantissa, 1 - bias - mantissa_bits)
        else:
            value = sign * math.ldexp(
                (1 << mantissa_bits) + mantissa, exponent - bias - mantissa_bits
            )
        table[byte] = value
    return table


Decoder = Callable[[np.ndarray, np.ndarray], None]


def _copy(raw: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, raw, casting="unsafe")


def _bf16(raw: np.ndarray, out: np.ndarray) -> None:
    # A bf16 value is the upper 16 bits of the float32 with the same value.
    widened = np.left_shift(raw.astype(np.uint32), 16)
    np.copyto(out, widened.view(np.float32))


def _table(table: np.ndarray) -> Decoder:
    def decode(raw: np.ndarray, out: np.ndarray) -> None:
        np.take(table, raw, out=out)

    return decode


@dataclass(frozen=True)
class ElementType:
    """How to read one manifest dtype: the numpy type of its stored bits, and how to widen them."""

    name: str
    kind: Kind
    raw: np.dtype
    decode: Decoder | None  # None for Kind.OTHER

    @property
    def bits(self) -> np.dtype:
        """A type with the same width whose equality is bitwise (NaN == NaN, 0.0 != -0.0)."""
        return np.dtype(f"<u{self.raw.itemsize}") if self.raw.itemsize in (1, 2, 4, 8) else self.raw


def _build_element_types() -> dict[str, ElementType]:
    types = {}
    for name, code in {
        "BOOL": "?",
        "U8": "u1",
        "I8": "i1",
        "U16": "<u2",
        "I16": "<i2",
        "U32": "<u4",
        "I32": "<i4",
        "U64": "<u8",
        "I64": "<i8",
    }.items():
        types[name] = ElementType(name, Kind.INTEGER, np.dtype(code), _copy)
    for name, code in {"F16": "<f2", "F32": "<f4", "F64": "<f8"}.items():
        types[name] = ElementType(name, Kind.FLOAT, np.dtype(code), _copy)
    types["BF16"] = ElementType("BF16", Kind.FLOAT, np.dtype("<u2"), _bf16)
    float8 = {
        "F8_E4M3": (4, 3, 7, "fn"),
        "F8_E5M2": (5, 2, 15, "ieee"),
        "F8_E4M3FNUZ": (4, 3, 8, "fnuz"),
        "F8_E5M2FNUZ": (5, 2, 16, "fnuz"),
        "F8_E8M0": (8, 0, 127, "e8m0"),
    }
    for name, spec in float8.items():
        types[name] = ElementType(name, Kind.FLOAT, np.dtype("u1"), _table(float8_table(*spec)))
    return types


_ELEMENT_TYPES = _build_element_types()


def element_type(dtype: str) -> ElementType:
    """How a manifest dtype is read; complex and quantized types are opaque bits."""
    known = _ELEMENT_TYPES.get(dtype)
    if known is not None:
        return known
    return ElementType(dtype, Kind.OTHER, np.dtype(f"V{dtype_by_name(dtype).itemsize}"), None)


def open_elements(store: LocalStore, entry: TensorEntry, path: str | None = None) -> np.ndarray:
    """The tensor's stored elements as a read-only array over a memory map of its object.

    Raises :class:`~git_theta_filter.store.local.ObjectMissingError` when the
    object is not in the store.
    """
    raw_type = element_type(entry.dtype).raw
    header = store.check_readable(entry.oid, path)
    if entry.extent_bytes() > header.nbytes:
        raise TensorExtentError(entry.name, entry.oid)
    if entry.numel == 0:
        return np.empty(entry.shape, dtype=raw_type)
    # An encoded object is decoded (and verified) into a temp file first; the
    # map stays valid after the file is removed.
    with store.canonical_file(entry.oid) as canonical, open(canonical, "rb") as file:
        flat = np.memmap(
            file, dtype=np.uint8, mode="r", offset=header.data_offset, shape=(header.nbytes,)
        )
    itemsize = raw_type.itemsize
    if entry.stride is None:
        return flat[: entry.nbytes].view(raw_type).reshape(entry.shape)
    # Checked above: the view's last element lies inside the payload, and
    # manifest parsing guarantees non-negative offsets and strides.
    start = (entry.offset or 0) * itemsize
    usable = (header.nbytes - start) // itemsize * itemsize
    return as_strided(
        flat[start : start + usable].view(raw_type),
        shape=entry.shape,
        strides=tuple(s * itemsize for s in entry.stride),
        writeable=False,
    )


def _iterator(arrays: list[np.ndarray]) -> np.nditer:
    return np.nditer(
        arrays,
        flags=["external_loop", "buffered", "zerosize_ok"],
        op_flags=[["readonly"]] * len(arrays),
        buffersize=CHUNK_ELEMENTS,
        order="C",
    )


def iter_chunks(elements: np.ndarray) -> Iterator[np.ndarray]:
    """1-D chunks of at most :data:`CHUNK_ELEMENTS`, in row-major order."""
    if elements.size == 0:
        return
    for chunk in _iterator([elements]):
        # numpy's stubs have nditer yield a tuple of arrays; with one operand it is the array.
        yield chunk.reshape(-1)  # type: ignore[attr-defined]


def iter_chunk_pairs(old: np.ndarray, new: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Aligned 1-D chunks of two arrays of one shape, in row-major order."""
    if old.shape != new.shape:
        raise ValueError(f"shapes differ: {old.shape} and {new.shape}")
    if old.size == 0:
        return
    for old_chunk, new_chunk in _iterator([old, new]):
        yield old_chunk.reshape(-1), new_chunk.reshape(-1)
