"""torch.save's zip archive: each ``data/<key>`` storage record becomes an object.

torch (2.x) writes, in order: ``<prefix>/data.pkl``, ``.format_version``,
``.storage_alignment``, ``byteorder``, ``data/0`` ... ``data/N-1``,
``version``, ``.data/serialization_id``, then the central directory. Every
record is stored (not compressed), 64-byte aligned through the extra field,
and has general-purpose flag bit 3 set: its sizes are zero in the local header
and follow the data in a data descriptor. The stream is therefore parsed like
this:

* data.pkl comes first; its size is found by scanning for the data descriptor
  whose size and CRC match. Its restricted scan gives every storage's size.
* a storage record's payload has exactly that size and streams into an object.
* every other byte (headers, small records, descriptors, the central
  directory) goes to the skeleton.

At the end the central directory, read by ``zip_directory.py`` (the reader the
merge driver and fsck use on the stored archive), must agree with the records
seen, or the file is stored opaque.
"""

from __future__ import annotations

import operator
import struct
import zlib

from ..dtypes import dtype_by_name
from ..manifest import TensorEntry
from .base import CleanContext, NotThisFormat, ParsedFile
from .pickle_scan import PickleScan, StorageRef, TensorRef, scan_pickle
from .zip_directory import read_zip_directory

__all__ = [
    "ZIP_MAGIC",
    "parse_torch_zip",
    "storage_object_type",
    "tensor_entry",
    "views_by_storage",
]

ZIP_MAGIC = b"PK\x03\x04"
_CENTRAL_MAGIC = b"PK\x01\x02"
_DESCRIPTOR_MAGIC = b"PK\x07\x08"
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_FLAG_DESCRIPTOR = 0x08
_FLAG_UTF8 = 0x800
_ZIP64_EXTRA = 0x0001
_SCAN_STEP = 1 << 16
# What the central directory must say of each record seen: its name, where it starts, its size.
_PLACE = operator.attrgetter("name", "header_offset", "size")


class _Record:
    def __init__(self, name: str, header_offset: int, data_offset: int, size: int) -> None:
        self.name = name
        self.header_offset = header_offset
        self.data_offset = data_offset
        self.size = size


def _zip64_sizes(extra: bytes) -> tuple[int, int] | None:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == _ZIP64_EXTRA and length >= 16:
            usize, csize = struct.unpack_from("<QQ", extra, pos + 4)
            return csize, usize
        pos += 4 + length
    return None


class _TorchZipParser:
    def __init__(self, ctx: CleanContext) -> None:
        self.ctx = ctx
        self.records: list[_Record] = []
        self.prefix: str | None = None
        self.scan: PickleScan | None = None
        self.little_endian = True
        self.storage_oids: dict[str, str] = {}
        self._names_by_storage: dict[str, list[str]] = {}  # storage key -> its tensors' names
        self._views_by_storage: dict[str, list[TensorRef]] = {}

    def parse(self) -> ParsedFile:
        source = self.ctx.source
        while True:
            magic = source.peek(4)
            if magic == ZIP_MAGIC:
                self._read_record()
            elif magic == _CENTRAL_MAGIC and self.records:
                break
            else:
                raise NotThisFormat(
                    f"unexpected bytes at offset {source.position} (not a torch zip record)"
                )
        # A record was read, and the first one must be data.pkl, which is scanned as it is read.
        assert self.scan is not None
        # The central directory and end records: small, all skeleton.
        source.copy_rest(self.ctx.layout.add_skeleton)
        self._check_central_directory()
        return ParsedFile("torch-zip", self._tensor_entries(), dict(self.scan.scalars))

    def _read_record(self) -> None:
        ctx = self.ctx
        header_offset = ctx.source.position
        fixed = ctx.keep(_LOCAL_HEADER.size, "a zip local header")
        (_, _, flags, method, _, _, _crc, csize, _usize, name_len, extra_len) = (
            _LOCAL_HEADER.unpack(fixed)
        )
        # One read for both: thousands of records, each read in a few small pieces.
        name_and_extra = ctx.keep(name_len + extra_len, "a zip entry's name and extra field")
        raw_name, extra = name_and_extra[:name_len], name_and_extra[name_len:]
        name = raw_name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437", "replace")
        has_descriptor = bool(flags & _FLAG_DESCRIPTOR)
        if not has_descriptor and csize == 0xFFFFFFFF:
            sizes = _zip64_sizes(extra)
            if sizes is None:
                raise NotThisFormat(f"zip entry {name!r} lacks its zip64 sizes")
            csize = sizes[0]
        data_offset = ctx.source.position

        if self.prefix is None:
            if not name.endswith("data.pkl") or (
                name != "data.pkl" and not name.endswith("/data.pkl")
            ):
                raise NotThisFormat("the first zip record is not data.pkl")
            self.prefix = name[: -len("data.pkl")]
        relative = name[len(self.prefix) :] if name.startswith(self.prefix) else None
        if relative is not None and (relative.startswith("code/") or relative == "constants.pkl"):
            raise NotThisFormat("a TorchScript archive")

        storage = None
        if (
            relative is not None
            and relative.startswith("data/")
            and self.scan is not None
            and method == 0
        ):
            storage = self.scan.storages.get(relative[len("data/") :])
        if (
            storage is not None
            and storage.key not in self.storage_oids
            and (has_descriptor or csize == storage.nbytes)
        ):
            size = storage.nbytes
            dtype, shape = storage_object_type(
                storage, self._views_by_storage.get(storage.key, []), self.little_endian
            )
            self.storage_oids[storage.key] = self.ctx.store_payload(
                dtype, shape, size, self._names_by_storage.get(storage.key, [])
            )
        elif has_descriptor:
            size = self._scan_to_descriptor(name)
        else:
            size = csize
            ctx.keep(size, f"zip entry {name!r}")
        if relative == "data.pkl":
            record_bytes = bytes(ctx.layout.skeleton[-size:]) if size else b""
            self.scan = _scan(record_bytes)
            for tensor_name, ref in self.scan.tensors:
                storage_ref = ref.storage if isinstance(ref, TensorRef) else ref
                self._names_by_storage.setdefault(storage_ref.key, []).append(tensor_name)
            self._views_by_storage = views_by_storage(self.scan)
        elif relative == "byteorder":
            self.little_endian = bytes(ctx.layout.skeleton[-size:]) != b"big"
        if has_descriptor:
            self._read_descriptor(name, size)
        self.records.append(_Record(name, header_offset, data_offset, size))

    def _scan_to_descriptor(self, name: str) -> int:
        """Keep bytes up to the data descriptor whose size and CRC match what precedes it.

        Only bytes known to precede the descriptor are consumed, so the
        descriptor itself is read next by :meth:`_read_descriptor`.
        """
        source = self.ctx.source
        size = 0
        crc = 0
        while True:
            window = source.peek(_SCAN_STEP)
            found = window.find(_DESCRIPTOR_MAGIC)
            while found >= 0 and found + 16 <= len(window):
                stored_crc, stored_size = struct.unpack_from("<II", window, found + 4)
                if (
                    stored_size == (size + found) & 0xFFFFFFFF
                    and zlib.crc32(window[:found], crc) == stored_crc
                ):
                    self.ctx.keep(found, f"zip entry {name!r}")
                    return size + found
                found = window.find(_DESCRIPTOR_MAGIC, found + 1)
            # Keep a tail unconsumed so a descriptor straddling the window is seen next time.
            step = len(window) - 15 if found < 0 else found
            if step <= 0:
                raise NotThisFormat(f"zip entry {name!r} has no data descriptor")
            data = self.ctx.keep(step, f"zip entry {name!r}")
            crc = zlib.crc32(data, crc)
            size += step

    def _read_descriptor(self, name: str, size: int) -> None:
        """Keep the data descriptor (16 bytes, or 24 with zip64 sizes) after an entry's data."""
        head = self.ctx.source.peek(28)
        for length, layout in ((16, "<4sIII"), (24, "<4sIQQ")):
            if len(head) < length:
                break
            magic, _crc, csize, _usize = struct.unpack_from(layout, head)
            if (
                magic == _DESCRIPTOR_MAGIC
                and csize == size
                and head[length : length + 2] in (b"PK", b"")
            ):
                self.ctx.keep(length, "a data descriptor")
                return
        raise NotThisFormat(f"zip entry {name!r}: no matching data descriptor after its data")

    def _tensor_entries(self) -> list[TensorEntry]:
        assert self.scan is not None
        entries = []
        for name, ref in self.scan.tensors:
            storage = ref.storage if isinstance(ref, TensorRef) else ref
            oid = self.storage_oids.get(storage.key)
            if oid is None:
                raise NotThisFormat(
                    f"storage {storage.key!r} of tensor {name!r} has no data record"
                )
            entries.append(tensor_entry(name, ref, oid))
        return entries

    def _check_central_directory(self) -> None:
        """The central directory, read as the merge driver and fsck will read the stored
        archive (``zip_directory.py``), must list exactly the records seen."""
        layout = self.ctx.layout
        directory = read_zip_directory(layout.skeleton, layout.splices, layout.size)
        if list(map(_PLACE, self.records)) != list(map(_PLACE, directory.records)):
            raise NotThisFormat("the zip central directory does not match the records")


def views_by_storage(scan: PickleScan) -> dict[str, list[TensorRef]]:
    """Storage key -> the tensors data.pkl makes of it (not those that are the storage
    itself): what :func:`storage_object_type` types a storage by. Gathered in one pass, so
    that typing every storage costs linear time in a checkpoint of thousands of tensors."""
    views: dict[str, list[TensorRef]] = {}
    for _, ref in scan.tensors:
        if isinstance(ref, TensorRef):
            views.setdefault(ref.storage.key, []).append(ref)
    return views


def storage_object_type(
    storage: StorageRef, views: list[TensorRef], little_endian: bool
) -> tuple[str, tuple[int, ...]]:
    """The dtype and shape clean writes storage ``storage``'s object with, ``views`` being
    the tensors data.pkl makes of it and ``little_endian`` the byte order recorded before
    its record (the merge driver checks a stored torch zip's objects against it).

    A storage one plain tensor (or several of one type) covers whole takes its type; one
    viewed in a single dtype is a flat array of it; anything else, and every storage of a
    big-endian archive, is bytes.
    """
    if not little_endian:
        return "U8", (storage.nbytes,)
    if len(views) == 1 and views[0].is_whole_storage:  # most storages: one plain tensor
        return views[0].dtype, views[0].shape
    kinds = {(t.dtype, t.shape) for t in views}
    if len(kinds) == 1 and all(t.is_whole_storage for t in views):
        return views[0].dtype, views[0].shape
    dtypes = {t.dtype for t in views} or {storage.dtype}
    if len(dtypes) == 1:
        dtype = dtypes.pop()
        itemsize = dtype_by_name(dtype).itemsize
        if storage.nbytes % itemsize == 0:
            return dtype, (storage.nbytes // itemsize,)
    return "U8", (storage.nbytes,)


def tensor_entry(name: str, ref: TensorRef | StorageRef, oid: str) -> TensorEntry:
    """The manifest's line for tensor ``name`` as data.pkl describes it (``ref``), its
    storage being object ``oid``: clean writes it, and the merge driver checks a stored
    torch zip's lines against it (``torch_zip_writer.py``).
    """
    if isinstance(ref, StorageRef):
        itemsize = dtype_by_name(ref.dtype).itemsize
        return TensorEntry(name, ref.dtype, (ref.nbytes // itemsize,), oid)
    if ref.is_whole_storage:
        return TensorEntry(name, ref.dtype, ref.shape, oid)
    return TensorEntry(name, ref.dtype, ref.shape, oid, ref.offset, ref.stride)


def _scan(record: bytes) -> PickleScan:
    from .pickle_scan import PickleScanError

    try:
        return scan_pickle(record)
    except PickleScanError as exc:
        raise NotThisFormat(f"data.pkl: {exc}") from None


def parse_torch_zip(ctx: CleanContext) -> ParsedFile:
    return _TorchZipParser(ctx).parse()
