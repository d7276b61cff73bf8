"""Element types: the names used in manifests and objects, and torch's names for them.

Manifests name dtypes with safetensors' spelling (``F32``, ``BF16`` ...). Types
safetensors cannot hold (complex128, quantized types) keep a name of their own
in the manifest while their object is stored as raw ``U8`` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DType",
    "DTYPES",
    "dtype_by_name",
    "TORCH_DTYPE_NAMES",
    "TORCH_STORAGE_TYPES",
    "UnknownDTypeError",
]

from .errors import ThetaError


class UnknownDTypeError(ThetaError):
    """A dtype name that this version does not know."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown dtype {name!r}")
        self.name = name


@dataclass(frozen=True)
class DType:
    name: str
    itemsize: int
    # Whether a safetensors object can carry this type as is; otherwise U8.
    in_safetensors: bool = True
    is_float: bool = False


DTYPES: dict[str, DType] = {
    d.name: d
    for d in [
        DType("BOOL", 1),
        DType("U8", 1),
        DType("I8", 1),
        DType("U16", 2),
        DType("I16", 2),
        DType("U32", 4),
        DType("I32", 4),
        DType("U64", 8),
        DType("I64", 8),
        DType("F8_E4M3", 1, is_float=True),
        DType("F8_E5M2", 1, is_float=True),
        DType("F16", 2, is_float=True),
        DType("BF16", 2, is_float=True),
        DType("F32", 4, is_float=True),
        DType("F64", 8, is_float=True),
        DType("C64", 8),
        # Below: no safetensors dtype, stored as U8 bytes.
        DType("C32", 4, in_safetensors=False),
        DType("C128", 16, in_safetensors=False),
        DType("F8_E4M3FNUZ", 1, in_safetensors=False),
        DType("F8_E5M2FNUZ", 1, in_safetensors=False),
        DType("F8_E8M0", 1, in_safetensors=False),
        DType("QI8", 1, in_safetensors=False),
        DType("QU8", 1, in_safetensors=False),
        DType("QI32", 4, in_safetensors=False),
        DType("QU4X2", 1, in_safetensors=False),
        DType("QU2X4", 1, in_safetensors=False),
    ]
}


def dtype_by_name(name: str) -> DType:
    try:
        return DTYPES[name]
    except KeyError:
        raise UnknownDTypeError(name) from None


# torch.<name> dtype globals, as they appear in data.pkl (e.g. ``torch.uint16``).
TORCH_DTYPE_NAMES: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "uint16": "U16",
    "int16": "I16",
    "short": "I16",
    "uint32": "U32",
    "int32": "I32",
    "int": "I32",
    "uint64": "U64",
    "int64": "I64",
    "long": "I64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
    "float16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float": "F32",
    "float64": "F64",
    "double": "F64",
    "complex32": "C32",
    "chalf": "C32",
    "complex64": "C64",
    "cfloat": "C64",
    "complex128": "C128",
    "cdouble": "C128",
    "qint8": "QI8",
    "quint8": "QU8",
    "qint32": "QI32",
    "quint4x2": "QU4X2",
    "quint2x4": "QU2X4",
}

# torch.<Name>Storage globals: the legacy typed storages named in persistent ids.
TORCH_STORAGE_TYPES: dict[str, str] = {
    "FloatStorage": "F32",
    "DoubleStorage": "F64",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64",
    "ComplexDoubleStorage": "C128",
    "QInt8Storage": "QI8",
    "QUInt8Storage": "QU8",
    "QInt32Storage": "QI32",
    "QUInt4x2Storage": "QU4X2",
    "QUInt2x4Storage": "QU2X4",
    # An untyped storage counts bytes; the tensor that uses it names the dtype.
    "UntypedStorage": "U8",
}
