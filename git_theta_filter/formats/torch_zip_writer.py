"""A stored torch zip with other storage payloads: how the merge driver writes a merged checkpoint.

The merged file keeps one side's archive byte for byte (local headers with
their 64-byte alignment padding, ``data.pkl``, the small records, the data
descriptors and the central directory) and swaps the payloads of some
``data/<key>`` records for other objects of the same length. No offset moves.
What changes with a payload is its record's CRC-32, which the zip keeps in the
central directory and, since torch sets general-purpose flag bit 3, in the
data descriptor after the data (the local header's field is then zero; it is
patched instead when the bit is clear).

torch also writes ``.data/serialization_id``: 40 digits, the first 20 derived
from the record names and the last 20 from the CRC-32s of the records written
before it, folded in file order with ``seed ^ (crc + 0x9e3779b9 + (seed << 6)
+ (seed >> 2))`` on 64 bits (checked against torch 2.13). The names stay the
same and the second half is recomputed, so the archive is byte for byte what
``torch.save`` writes for the merged tensors. An id that does not follow this
rule (another writer, another torch) is left as it is; ``torch.load`` does
not check it.

``data.pkl`` is read with the restricted scanner, never unpickled.
"""

from __future__ import annotations

import bisect
import itertools
import struct
import zlib
from dataclasses import dataclass, field

from ..errors import ThetaError
from ..manifest import Manifest, Splice, TensorEntry
from ..store.local import LocalStore
from ..store.object_format import object_type_for
from .base import NotThisFormat
from .layout import ObjectType, SplicedFile, first_misfit, payload_crc32, read_skeleton
from .pickle_scan import PickleScan, PickleScanError, StorageRef, TensorRef, scan_pickle
from .torch_zip import storage_object_type, tensor_entry, views_by_storage
from .zip_directory import ZipRecord, read_data_pkl_record, read_zip_directory

__all__ = [
    "ArchiveLayoutError",
    "ZipRecord",
    "StoredTorchZip",
    "read_stored_torch_zip",
    "serialization_id_suffix",
]

_DESCRIPTOR_MAGIC = b"PK\x07\x08"
_LOCAL_CRC_AT = 14
_CENTRAL_CRC_AT = 16
_SERIALIZATION_ID = ".data/serialization_id"
_MASK64 = (1 << 64) - 1


class ArchiveLayoutError(ThetaError):
    """A stored torch zip whose records, data.pkl and manifest do not fit together."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: cannot rewrite the torch zip: {reason}")
        self.path = path
        self.reason = reason


def serialization_id_suffix(crcs: list[int]) -> str:
    """The last 20 digits of torch's serialization id for records with these CRC-32s,
    in file order.
    """
    seed = 0
    for crc in crcs:
        seed ^= (crc + 0x9E3779B9 + ((seed << 6) & _MASK64) + (seed >> 2)) & _MASK64
    return f"{seed:020d}"


@dataclass
class StoredTorchZip:
    """A torch zip in the store: its manifest, skeleton,
    records and which storage each tensor uses.
    """

    path: str
    manifest: Manifest
    skeleton: bytes
    prefix: str
    records: list[ZipRecord]
    data_pkl: bytes
    storage_of_tensor: dict[str, str]
    _splice_at: dict[int, int] = field(init=False)  # data offset -> index in manifest.splices
    _splice_starts: list[int] = field(init=False)
    _spliced_before: list[int] = field(init=False)  # [i]: payload bytes in the first i splices
    _first_by_name: dict[str, ZipRecord] = field(init=False)  # the first record of each name

    def __post_init__(self) -> None:
        splices = self.manifest.splices
        self._splice_at = {splice.offset: index for index, splice in enumerate(splices)}
        self._splice_starts = [splice.offset for splice in splices]
        self._spliced_before = [0, *itertools.accumulate(splice.length for splice in splices)]
        # A lookup per storage: thousands of them in a file of small tensors.
        self._first_by_name = {}
        for record in self.records:
            self._first_by_name.setdefault(record.name, record)

    def storage_record(self, key: str) -> ZipRecord:
        return self._record(f"{self.prefix}data/{key}")

    def storage_splice(self, key: str) -> Splice:
        """The splice that holds storage ``key``'s payload."""
        return self.manifest.splices[self._splice_at[self.storage_record(key).data_offset]]

    def relative_name(self, record: ZipRecord) -> str | None:
        """The record's name within the archive's prefix (None for a name outside it)."""
        return record.name[len(self.prefix) :] if record.name.startswith(self.prefix) else None

    def record_bytes(self, record: ZipRecord) -> bytes:
        """A record that lies in the skeleton (not a storage payload), whole."""
        at = self._to_skeleton(record.data_offset)
        return self.skeleton[at : at + record.size]

    def _record(self, name: str) -> ZipRecord:
        record = self._first_by_name.get(name)
        if record is None:
            raise ArchiveLayoutError(self.path, f"no record {name!r}")
        return record

    def with_payloads(self, payloads: dict[str, str], store: LocalStore) -> SplicedFile:
        """This archive with storage ``key``'s payload replaced by object ``payloads[key]``.

        Every new object must have its storage's payload length.
        """
        skeleton = bytearray(self.skeleton)
        splices = list(self.manifest.splices)
        crcs = {record.name: record.crc for record in self.records}
        for key, oid in sorted(payloads.items()):
            record = self.storage_record(key)
            index = self._splice_at[record.data_offset]
            old = splices[index]
            if old.oid == oid:
                continue
            file, header = store.open_object(oid, self.path)
            file.close()
            if header.nbytes != old.length:
                raise ArchiveLayoutError(
                    self.path,
                    f"storage {key} is {old.length} bytes, object {oid} holds {header.nbytes}",
                )
            splices[index] = Splice(old.offset, old.length, oid)
            crcs[record.name] = payload_crc32(store, oid)
            self._patch_crc(skeleton, record, crcs[record.name])
        self._renew_serialization_id(skeleton, crcs)
        return SplicedFile(bytes(skeleton), splices)

    def _patch_crc(self, skeleton: bytearray, record: ZipRecord, crc: int) -> None:
        if record.has_descriptor:
            at = self._to_skeleton(record.data_offset + record.size)
            if skeleton[at : at + 4] != _DESCRIPTOR_MAGIC:
                raise ArchiveLayoutError(
                    self.path, f"record {record.name!r} has no signed data descriptor"
                )
            struct.pack_into("<I", skeleton, at + 4, crc)
        else:
            struct.pack_into(
                "<I", skeleton, self._to_skeleton(record.header_offset) + _LOCAL_CRC_AT, crc
            )
        struct.pack_into(
            "<I", skeleton, self._to_skeleton(record.central_offset) + _CENTRAL_CRC_AT, crc
        )

    def _renew_serialization_id(self, skeleton: bytearray, crcs: dict[str, int]) -> None:
        names = [record.name for record in self.records]
        name = f"{self.prefix}{_SERIALIZATION_ID}"
        if name not in names:
            return
        record = self._record(name)
        at = self._to_skeleton(record.data_offset)
        current = bytes(skeleton[at : at + record.size])
        earlier = self.records[: names.index(name)]
        if len(current) != 40 or not current.isdigit():
            return
        if current[20:].decode() != serialization_id_suffix([r.crc for r in earlier]):
            return  # not torch's rule: keep the id as it is
        renewed = current[:20] + serialization_id_suffix([crcs[r.name] for r in earlier]).encode()
        if renewed != current:
            skeleton[at : at + 40] = renewed
            self._patch_crc(skeleton, record, zlib.crc32(renewed))

    def _to_skeleton(self, offset: int) -> int:
        """Where a file offset outside every splice lies in the skeleton."""
        splices = self.manifest.splices
        before = bisect.bisect_right(self._splice_starts, offset)
        if before and offset < splices[before - 1].end:
            raise ArchiveLayoutError(self.path, f"offset {offset} lies inside a tensor payload")
        return offset - self._spliced_before[before]


def read_stored_torch_zip(manifest: Manifest, store: LocalStore, path: str) -> StoredTorchZip:
    """Read a stored torch zip's structure from its skeleton (payloads are not read).

    The records and data.pkl come from the reader clean and fsck use
    (``zip_directory.py``), which checks sizes and compression before it reads
    anything; every storage record must then be stored, not compressed.
    """
    if manifest.format != "torch-zip":
        raise ArchiveLayoutError(path, f"it is {manifest.format}, not a torch zip")
    skeleton = read_skeleton(store, manifest, path)
    try:
        directory = read_zip_directory(skeleton, manifest.splices, manifest.size)
        compressed = [record.name for record in directory.records if not record.stored]
        if compressed:
            raise NotThisFormat(f"record {compressed[0]!r} is compressed")
        data_pkl = read_data_pkl_record(skeleton, manifest.splices, manifest.size, directory)
        scan = scan_pickle(data_pkl)
    except NotThisFormat as exc:
        raise ArchiveLayoutError(path, str(exc)) from None
    except PickleScanError as exc:
        raise ArchiveLayoutError(path, f"data.pkl: {exc}") from None
    storage_of_tensor = {
        name: (ref.key if isinstance(ref, StorageRef) else ref.storage.key)
        for name, ref in scan.tensors
    }
    archive = StoredTorchZip(
        path=path,
        manifest=manifest,
        skeleton=skeleton,
        prefix=directory.prefix,
        records=directory.records,
        data_pkl=data_pkl,
        storage_of_tensor=storage_of_tensor,
    )
    _check_against_manifest(archive, scan.tensors)
    _check_object_types(archive, scan, store)
    return archive


def _check_against_manifest(
    archive: StoredTorchZip, refs: list[tuple[str, TensorRef | StorageRef]]
) -> None:
    """data.pkl's tensors are the manifest's, each storage's record is one of its splices,
    and each tensor has the dtype, shape and view its line gives (as clean writes the line).

    A manifest from another branch may have been written by anyone: the merged file keeps
    this data.pkl, so lines that disagree with it would promise tensors the file lacks.
    """
    named = {tensor.name: tensor for tensor in archive.manifest.tensors}
    if set(archive.storage_of_tensor) != set(named):
        raise ArchiveLayoutError(archive.path, "data.pkl names other tensors than the manifest")
    for key in set(archive.storage_of_tensor.values()):
        record = archive.storage_record(key)
        index = archive._splice_at.get(record.data_offset)
        if index is None or archive.manifest.splices[index].length != record.size:
            raise ArchiveLayoutError(
                archive.path, f"storage {key} is not one of the manifest's splices"
            )
    for name, ref in refs:
        line = named[name]
        described = tensor_entry(name, ref, line.oid)  # its dtype, shape and view, not its oid
        if described != line:
            raise ArchiveLayoutError(
                archive.path,
                f"data.pkl has tensor {name!r} as {_layout(described)}, "
                f"the manifest as {_layout(line)}",
            )


def _check_object_types(archive: StoredTorchZip, scan: PickleScan, store: LocalStore) -> None:
    """Each tensor storage's object has the dtype and shape clean gives it.

    A manifest written by someone else is held to clean's rule here (see
    :func:`~.layout.first_misfit`).
    """
    views = views_by_storage(scan)
    used = set(archive.storage_of_tensor.values())
    wanted: dict[str, tuple[str, ObjectType]] = {}  # storage key -> (oid, type), file order
    little_endian = True  # as clean reads the archive: in file order, little until told
    for record in archive.records:
        relative = archive.relative_name(record)
        if relative == "byteorder":
            little_endian = archive.record_bytes(record) != b"big"
            continue
        key = relative[len("data/") :] if relative and relative.startswith("data/") else None
        if key in used and key not in wanted:
            storage = scan.storages[key]
            kind = storage_object_type(storage, views.get(key, []), little_endian)
            wanted[key] = (
                archive.storage_splice(key).oid,
                object_type_for(*kind, storage.nbytes),
            )
    misfit = first_misfit(store, wanted, archive.path)
    if misfit is not None:
        key, found, should_be = misfit
        raise ArchiveLayoutError(
            archive.path, f"storage {key} is {found}, data.pkl makes it {should_be}"
        )


def _layout(entry: TensorEntry) -> str:
    """A tensor line's dtype, shape and view (``F32 [2] offset=2 stride=[1]``), as the
    manifest writes them."""
    fields = entry.render().split(" ")  # tensor, name, dtype, shape, oid[, offset, stride]
    return " ".join(fields[2:4] + fields[5:])
