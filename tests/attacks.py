"""Adversarial inputs, built by code: malformed and hostile zip archives.

The hostile tests and the fuzz targets share these builders. Each returns
the bytes of one file; what the filter must do with it (store it, structured
or opaque, and give it back byte for byte) is the tests' business.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

import torch

__all__ = [
    "RawEntry",
    "raw_zip",
    "torch_zip_bytes",
    "torch_entries",
    "overlapping_entries",
    "compressed_entries",
    "zip_bomb",
    "zip64_archive",
    "duplicate_names",
    "non_utf8_name",
]


def torch_zip_bytes(obj: object) -> bytes:
    """torch.save to a buffer (so every record is under ``archive/``)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def torch_entries(data: bytes) -> list[tuple[str, bytes]]:
    """The records of a zip, in order: (name, uncompressed bytes)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


@dataclass
class RawEntry:
    """One record, written as it is given: nothing is checked or derived except the offsets."""

    name: bytes
    data: bytes  # as stored (compressed when method is 8)
    method: int = 0
    flags: int = 0
    crc: int | None = None  # default: crc32 of ``data`` (right for stored records)
    uncompressed_size: int | None = None  # default: len(data)
    # The central directory entry points at this record's local header instead.
    central_offset_of: int | None = None


def raw_zip(entries: list[RawEntry]) -> bytes:
    """A zip archive laid out exactly as ``entries`` say: local records, central directory,
    end record.
    """
    out = bytearray()
    offsets = []
    for entry in entries:
        offsets.append(len(out))
        crc = zlib.crc32(entry.data) if entry.crc is None else entry.crc
        usize = len(entry.data) if entry.uncompressed_size is None else entry.uncompressed_size
        out += struct.pack(
            "<4sHHHHHIIIHH",
            b"PK\x03\x04",
            20,
            entry.flags,
            entry.method,
            0,
            0x21,
            crc,
            len(entry.data),
            usize,
            len(entry.name),
            0,
        )
        out += entry.name + entry.data
    central_start = len(out)
    for index, entry in enumerate(entries):
        crc = zlib.crc32(entry.data) if entry.crc is None else entry.crc
        usize = len(entry.data) if entry.uncompressed_size is None else entry.uncompressed_size
        offset = offsets[index if entry.central_offset_of is None else entry.central_offset_of]
        out += struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02", 20, 20, entry.flags, entry.method, 0, 0x21, crc, len(entry.data), usize,
            len(entry.name), 0, 0, 0, 0, 0, offset,
        )  # fmt: skip
        out += entry.name
    central_size = len(out) - central_start
    out += struct.pack(
        "<4sHHHHIIH",
        b"PK\x05\x06",
        0,
        0,
        len(entries),
        len(entries),
        central_size,
        central_start,
        0,
    )
    return bytes(out)


def _stored(entries: list[tuple[str, bytes]]) -> list[RawEntry]:
    return [RawEntry(name.encode(), data) for name, data in entries]


def overlapping_entries(checkpoint: bytes) -> bytes:
    """The central directory names the first storage record twice:
    ``data/1``'s entry points at ``data/0``.
    """
    entries = _stored(torch_entries(checkpoint))
    first = next(i for i, e in enumerate(entries) if e.name.endswith(b"data/0"))
    second = next(i for i, e in enumerate(entries) if e.name.endswith(b"data/1"))
    entries[second].central_offset_of = first
    return raw_zip(entries)


def compressed_entries(checkpoint: bytes) -> bytes:
    """Every record deflated, as `zip -r` would write the archive."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in torch_entries(checkpoint):
            archive.writestr(name, data)
    return out.getvalue()


def zip_bomb(checkpoint: bytes, inflated: int = 256 << 20) -> bytes:
    """A torch zip plus a deflated record of ``inflated`` zero bytes in about a
    thousandth of that.
    """
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    parts = []
    crc = 0
    for _ in range(inflated // len(chunk)):
        parts.append(compressor.compress(chunk))
        crc = zlib.crc32(chunk, crc)
    parts.append(compressor.flush())
    entries = _stored(torch_entries(checkpoint))
    bomb = RawEntry(b"archive/bomb", b"".join(parts), method=8, crc=crc, uncompressed_size=inflated)
    return raw_zip(entries[:-1] + [bomb] + entries[-1:])


def zip64_archive(checkpoint: bytes) -> bytes:
    """The same records, each with zip64 sizes
    (0xFFFFFFFF in the header, the real ones in the extra field).
    """
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, data in torch_entries(checkpoint):
            with archive.open(
                zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), "w", force_zip64=True
            ) as record:
                record.write(data)
    return out.getvalue()


def duplicate_names(checkpoint: bytes) -> bytes:
    """``data/0`` twice, with different contents, as two records of the same name."""
    entries = _stored(torch_entries(checkpoint))
    index = next(i for i, e in enumerate(entries) if e.name.endswith(b"data/0"))
    twin = RawEntry(entries[index].name, bytes(reversed(entries[index].data)))
    return raw_zip(entries[: index + 1] + [twin] + entries[index + 1 :])


def non_utf8_name(checkpoint: bytes, utf8_flag: bool) -> bytes:
    """An extra record whose name is not UTF-8, with or without the zip's UTF-8 flag (bit 11)."""
    entries = _stored(torch_entries(checkpoint))
    odd = RawEntry(b"archive/extra-\xff\xfe\x80", b"notes", flags=0x800 if utf8_flag else 0)
    return raw_zip(entries[:-1] + [odd] + entries[-1:])
