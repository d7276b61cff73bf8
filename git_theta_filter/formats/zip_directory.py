"""A stored torch zip's records, read from its skeleton: the one reader for clean, merge and fsck.

Clean streams a torch zip in and, at the end, has its central directory read
here to check it against the records it saw; the merge driver and
``git theta fsck --check-pickles`` read a stored archive's records and its
``data.pkl`` here, from the skeleton of a manifest that may have been
crafted. So every check is made once, for all three:

* Only skeleton bytes are read. The central directory, every local header and
  ``data.pkl`` lie outside the tensor payloads in an archive clean stored; an
  archive whose structure reaches into a payload is refused, so a crafted
  central directory cannot make a reader load a model's tensors into memory.
  The skeleton itself is bounded (``MAX_SKELETON_BYTES``) before it is read.
* Each record's central entry and local header must agree (magic numbers,
  offsets inside the archive, records in file order without overlap, a stored
  record's two sizes equal), checked before any record's data is read.
* ``data.pkl`` must be the first record, stored (never inflated: a deflated
  record could be a zip bomb) and inside the skeleton, checked before it is read.
* Anything malformed, including what :mod:`zipfile` raises on its own
  (``BadZipFile``, ``NotImplementedError`` for a newer zip version, a
  ``struct.error``, an undecodable name), is :class:`NotThisFormat` with the
  reason; each caller names the file in its own error.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from typing import NamedTuple

from ..manifest import Splice
from .base import NotThisFormat
from .layout import SplicedReader

__all__ = ["ZipRecord", "ZipDirectory", "read_zip_directory", "read_data_pkl_record"]

_LOCAL_MAGIC = b"PK\x03\x04"
_CENTRAL_MAGIC = b"PK\x01\x02"
_LOCAL_HEADER_SIZE = 30
_CENTRAL_ENTRY_SIZE = 46
_FLAG_DESCRIPTOR = 0x08
# What zipfile raises on a malformed archive besides BadZipFile.
_ZIPFILE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,  # "zip file version 25.5" and other features it lacks
    ValueError,  # includes UnicodeDecodeError of a name flagged UTF-8
    OverflowError,
    OSError,  # and our reader's refusal to read a payload
    EOFError,
    struct.error,
)


# A NamedTuple: as immutable as a frozen dataclass, and made in half the time or less
# (one per record: 6,000 for a checkpoint of 6,000 tensors, at each clean).
class ZipRecord(NamedTuple):
    """One archive member; offsets are file offsets."""

    name: str
    header_offset: int
    data_offset: int
    size: int
    crc: int
    has_descriptor: bool
    central_offset: int
    stored: bool  # not compressed


@dataclass(frozen=True)
class ZipDirectory:
    records: list[ZipRecord]
    central_start: int

    @property
    def prefix(self) -> str:
        """The folder of the first record, data.pkl (``archive/``, ``model/``, or none)."""
        return self.records[0].name[: -len("data.pkl")]


def read_zip_directory(
    skeleton: bytes | bytearray, splices: list[Splice], size: int
) -> ZipDirectory:
    """The records of the archive of ``size`` bytes whose non-payload bytes are ``skeleton``.

    Raises :class:`NotThisFormat` for anything but a well-formed zip whose
    structure lies in the skeleton and whose first record is data.pkl.
    """
    reader = SplicedReader(skeleton, splices, size, store=None)
    try:
        with zipfile.ZipFile(reader) as archive:
            infos = archive.infolist()
            central_start: int = archive.start_dir  # type: ignore[attr-defined]
        records = _records(reader, infos, central_start)
    except _ZIPFILE_ERRORS as exc:
        raise NotThisFormat(f"bad zip archive ({exc})") from None
    if not records or not _is_data_pkl(records[0].name):
        raise NotThisFormat("the first record is not data.pkl")
    return ZipDirectory(records, central_start)


def read_data_pkl_record(
    skeleton: bytes | bytearray, splices: list[Splice], size: int, directory: ZipDirectory
) -> bytes:
    """The bytes of data.pkl, once it is known to be stored and inside the skeleton."""
    record = directory.records[0]
    if not record.stored:
        raise NotThisFormat("data.pkl is compressed")
    reader = SplicedReader(skeleton, splices, size, store=None)
    reader.seek(record.data_offset)
    try:
        data = reader.read(record.size)
    except OSError as exc:
        raise NotThisFormat(f"data.pkl: {exc}") from None
    if len(data) != record.size:
        raise NotThisFormat("data.pkl runs past the end of the archive")
    return data


def _is_data_pkl(name: str) -> bool:
    return name == "data.pkl" or name.endswith("/data.pkl")


def _records(
    reader: SplicedReader, infos: list[zipfile.ZipInfo], central_start: int
) -> list[ZipRecord]:
    """Every record with its data offset (from its local header) and its central entry,
    each checked against the other and against the records before it."""
    records: list[ZipRecord] = []
    central = central_start
    end_of_previous = 0
    for info in infos:
        entry = reader.read_at(central, _CENTRAL_ENTRY_SIZE)
        if len(entry) != _CENTRAL_ENTRY_SIZE or entry[:4] != _CENTRAL_MAGIC:
            raise NotThisFormat(f"no central directory entry at {central}")
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", entry, 28)
        if info.header_offset < end_of_previous:
            raise NotThisFormat(f"record {info.filename!r} overlaps the record before it")
        local = reader.read_at(info.header_offset, _LOCAL_HEADER_SIZE)
        if len(local) != _LOCAL_HEADER_SIZE or local[:4] != _LOCAL_MAGIC:
            raise NotThisFormat(f"record {info.filename!r} has no local header")
        local_name_length, local_extra_length = struct.unpack_from("<HH", local, 26)
        data_offset = info.header_offset + _LOCAL_HEADER_SIZE + local_name_length
        data_offset += local_extra_length
        stored = info.compress_type == zipfile.ZIP_STORED
        if stored and info.compress_size != info.file_size:
            raise NotThisFormat(f"record {info.filename!r}: a stored record of two sizes")
        end_of_previous = data_offset + info.compress_size
        if end_of_previous > central_start:
            raise NotThisFormat(f"record {info.filename!r} runs into the central directory")
        records.append(
            ZipRecord(
                name=info.filename,
                header_offset=info.header_offset,
                data_offset=data_offset,
                size=info.compress_size,
                crc=info.CRC,
                has_descriptor=bool(info.flag_bits & _FLAG_DESCRIPTOR),
                central_offset=central,
                stored=stored,
            )
        )
        central += _CENTRAL_ENTRY_SIZE + name_length + extra_length + comment_length
    return records
