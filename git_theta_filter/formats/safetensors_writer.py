"""A safetensors file made of tensor objects: how the merge driver writes a merged safetensors file.

When the merged file holds the same tensors (names, dtypes, shapes) and the
same ``__metadata__`` as one side, that side's header is kept byte for byte
and only payloads change. Otherwise a new header is written: the metadata
first, then the tensors sorted by name and laid out in that order, as compact
JSON padded with spaces to a multiple of 8 bytes, so that the data starts
aligned (as the reference writer does).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from ..errors import ThetaError
from ..manifest import Manifest, Splice, TensorEntry
from ..store.local import LocalStore
from ..store.object_format import object_type_for
from .base import NotThisFormat
from .layout import ObjectType, SplicedFile, first_misfit, read_skeleton
from .safetensors_file import parse_safetensors_header

__all__ = [
    "SafetensorsHeaderError",
    "StoredSafetensors",
    "read_stored_safetensors",
    "new_safetensors_file",
]

_METADATA = "__metadata__"
_LENGTH = struct.Struct("<Q")


class SafetensorsHeaderError(ThetaError):
    """A stored safetensors skeleton that is not the header its manifest describes."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: cannot rewrite the safetensors file: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class StoredSafetensors:
    """A safetensors file in the store: its header
    (the whole skeleton) and where each tensor's data is.
    """

    path: str
    manifest: Manifest
    skeleton: bytes
    metadata: dict[str, str] | None
    splice_of_tensor: dict[str, int]  # name -> index in manifest.splices

    def layout(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {tensor.name: (tensor.dtype, tensor.shape) for tensor in self.manifest.tensors}

    def with_payloads(self, payloads: dict[str, str]) -> SplicedFile:
        """This file with tensor ``name``'s data replaced by object ``payloads[name]``
        (same type).
        """
        splices = list(self.manifest.splices)
        for name, oid in payloads.items():
            index = self.splice_of_tensor[name]
            splices[index] = Splice(splices[index].offset, splices[index].length, oid)
        return SplicedFile(self.skeleton, splices)


def read_stored_safetensors(manifest: Manifest, store: LocalStore, path: str) -> StoredSafetensors:
    """A stored safetensors file's header, read by the reader clean uses
    (:func:`~.safetensors_file.parse_safetensors_header`), and checked against its manifest."""
    if manifest.format != "safetensors":
        raise SafetensorsHeaderError(path, f"it is {manifest.format}, not safetensors")
    skeleton = read_skeleton(store, manifest, path)
    if (
        len(skeleton) < _LENGTH.size
        or _LENGTH.unpack_from(skeleton)[0] != len(skeleton) - _LENGTH.size
    ):
        raise SafetensorsHeaderError(path, "the skeleton is not exactly a header")
    try:
        header = parse_safetensors_header(skeleton[_LENGTH.size :])
    except NotThisFormat as exc:
        raise SafetensorsHeaderError(path, str(exc)) from None
    # By oid too: empty tensors share their offset with the next tensor.
    splices = {(s.offset, s.length, s.oid): index for index, s in enumerate(manifest.splices)}
    tensors = {tensor.name: tensor for tensor in manifest.tensors}
    splice_of_tensor = {}
    wanted: dict[str, tuple[str, ObjectType]] = {}  # tensor -> its object's id and type
    for entry in header.entries:
        tensor = tensors.get(entry.name)
        index = None
        # As clean writes the line: the header's dtype and shape, never a view.
        if tensor is not None and tensor == TensorEntry(
            entry.name, entry.dtype, entry.shape, tensor.oid
        ):
            where = (len(skeleton) + entry.begin, entry.end - entry.begin, tensor.oid)
            index = splices.get(where)
        if index is None:
            raise SafetensorsHeaderError(
                path, f"tensor {entry.name!r} is not the manifest's tensor of that name"
            )
        kind = object_type_for(entry.dtype, entry.shape, entry.end - entry.begin)
        wanted[entry.name] = (manifest.splices[index].oid, kind)
        splice_of_tensor[entry.name] = index
    if set(splice_of_tensor) != set(tensors):
        raise SafetensorsHeaderError(path, "the header names other tensors than the manifest")
    misfit = first_misfit(store, wanted, path)
    if misfit is not None:
        name, found, should_be = misfit
        raise SafetensorsHeaderError(
            path, f"tensor {name!r} is {found}, the header makes it {should_be}"
        )
    return StoredSafetensors(path, manifest, skeleton, header.metadata, splice_of_tensor)


def new_safetensors_file(
    tensors: list[TensorEntry], metadata: dict[str, str] | None
) -> SplicedFile:
    """A file holding ``tensors`` (each one's object is its whole data), sorted by name."""
    header: dict[str, object] = {} if metadata is None else {_METADATA: metadata}
    offset = 0
    ordered = sorted(tensors, key=lambda tensor: tensor.name)
    for tensor in ordered:
        header[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    body = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    body += b" " * (-len(body) % 8)
    skeleton = _LENGTH.pack(len(body)) + body
    splices = []
    position = len(skeleton)
    for tensor in ordered:
        splices.append(Splice(position, tensor.nbytes, tensor.oid))
        position += tensor.nbytes
    return SplicedFile(skeleton, splices)
