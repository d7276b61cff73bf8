"""Combining two versions of a tensor: ``(1 − α)·ours + α·theirs``, for the merge driver.

The arithmetic is done in float64, a chunk at a time, and the result is
rounded back to the tensor's dtype exactly as torch's ``Tensor.to`` rounds a
float64 tensor, so that the merge gives the bits that
``((1 - α) * ours.double() + α * theirs.double()).to(dtype)`` gives in torch:

* F64: no rounding. F32: round to nearest, ties to even.
* F16 and BF16: to float32 first, then to the 16-bit type, both round to
  nearest, ties to even. This is what torch does (two roundings), not a single
  correctly rounded step. A NaN becomes the quiet NaN ``0x7FC0`` in BF16.
* integers and BOOL: round to nearest, ties to even (``torch.round``), then
  cast. A 64-bit integer is exact in float64 only up to 2**53 in magnitude;
  beyond that the values are refused rather than silently rounded.

Other dtypes (the float8 types, complex and quantized ones) have no exact
round trip here and are not combined: the merge reports a conflict instead.
"""

from __future__ import annotations

import numpy as np

from .elements import CHUNK_ELEMENTS, element_type, iter_chunk_pairs, open_elements
from .errors import ThetaError
from .manifest import TensorEntry
from .store.local import LocalStore
from .store.object_format import ObjectHeader

__all__ = ["COMBINABLE_DTYPES", "InexactCombinationError", "combine_objects"]

_FLOATS = ("F64", "F32", "F16", "BF16")
_INTEGERS = ("BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64")
COMBINABLE_DTYPES = frozenset(_FLOATS + _INTEGERS)
# float64 holds every integer up to this magnitude exactly.
_EXACT_INTEGER_LIMIT = float(2**53)


class InexactCombinationError(ThetaError):
    """Integer values too large to be combined exactly through float64."""

    def __init__(self, oid: str) -> None:
        super().__init__(
            f"object {oid} holds integers beyond 2**53, which float64 cannot combine exactly"
        )
        self.oid = oid


def _to_bf16_bits(values: np.ndarray) -> np.ndarray:
    single = values.astype(np.float32)
    bits = single.view(np.uint32)
    # Round to nearest even on the upper 16 bits: add 0x7FFF plus the lowest kept bit.
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    rounded[np.isnan(single)] = 0x7FC0
    return rounded


def _encode(values: np.ndarray, dtype: str, raw: np.dtype, oid: str) -> np.ndarray:
    """float64 values as the stored elements of ``dtype``, rounded as torch rounds."""
    if dtype == "F64":
        return values
    if dtype == "F32":
        return values.astype(np.float32)
    if dtype == "F16":
        return values.astype(np.float32).astype(np.float16)
    if dtype == "BF16":
        return _to_bf16_bits(values)
    rounded = np.rint(values)
    if raw.itemsize == 8 and rounded.size and float(np.abs(rounded).max()) > _EXACT_INTEGER_LIMIT:
        raise InexactCombinationError(oid)
    if dtype == "BOOL":
        return rounded != 0
    return rounded.astype(raw)


def combine_objects(store: LocalStore, ours_oid: str, theirs_oid: str, theirs_weight: float) -> str:
    """Write ``(1 − w)·ours + w·theirs`` of two objects of one dtype and shape; returns its oid.

    The result has the objects' header, so a storage keeps its object type.
    Raises :class:`InexactCombinationError` for 64-bit integers beyond 2**53,
    and ``ValueError`` for objects that differ in type or that hold a dtype
    outside :data:`COMBINABLE_DTYPES` (the caller checks both first).
    """
    ours_header = _header(store, ours_oid)
    theirs_header = _header(store, theirs_oid)
    if (ours_header.dtype, ours_header.shape) != (theirs_header.dtype, theirs_header.shape):
        raise ValueError(f"objects {ours_oid} and {theirs_oid} differ in dtype or shape")
    dtype, shape = ours_header.dtype, ours_header.shape
    if dtype not in COMBINABLE_DTYPES:
        raise ValueError(f"{dtype} values cannot be combined")
    etype = element_type(dtype)
    ours = open_elements(store, TensorEntry("ours", dtype, shape, ours_oid))
    theirs = open_elements(store, TensorEntry("theirs", dtype, shape, theirs_oid))
    size = min(CHUNK_ELEMENTS, max(ours.size, 1))
    ours_values, theirs_values = np.empty(size), np.empty(size)
    writer = store.writer(dtype, shape, ours_header.nbytes)
    try:
        for ours_raw, theirs_raw in iter_chunk_pairs(ours, theirs):
            count = ours_raw.size
            x, y = ours_values[:count], theirs_values[:count]
            etype.decode(ours_raw, x)  # type: ignore[misc]
            etype.decode(theirs_raw, y)  # type: ignore[misc]
            # The same operations, in the same order, as the torch expression in the docstring.
            np.multiply(x, 1.0 - theirs_weight, out=x)
            np.multiply(y, theirs_weight, out=y)
            np.add(x, y, out=x)
            # As bytes: the writer counts len() of what it is given. A uint8 ndarray is a
            # buffer of them, which the writer's annotation does not list.
            writer.write(
                np.ascontiguousarray(_encode(x, dtype, etype.raw, ours_oid)).view(np.uint8)  # type: ignore[arg-type]
            )
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def _header(store: LocalStore, oid: str) -> ObjectHeader:
    file, header = store.open_object(oid)
    file.close()
    return header
