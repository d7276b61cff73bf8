"""Consolidating the local store: many packs and small loose objects into one pack.

``git theta repack`` and ``git theta gc`` run this with the exclusive gc
lock held (``locks.py``), so no writer adds objects meanwhile. The new pack
is linked into place before anything it replaces is removed, so a reader
always finds every object somewhere. Canonical objects are encoded on the
way (docs/store.md); encoded ones, deltas among them, are copied as they are.
Every object is checked to hash to its id before it is copied: the copy a
lookup finds replaces every other, which repack then deletes. Large loose
objects are rewritten in place of their file when their form is older than
the encoder's: canonical ones are encoded, and encoded ones of version 1 get
the digests of version 2.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .encoded import (
    VERSION_DIGESTED,
    EncodingWriter,
    ObjectReader,
    StoredObject,
    version_for,
    width_for,
    write_digested,
)
from .local import LocalStore
from .pack import PackWriter
from .writing import COPY_CHUNK, PACK_BELOW, UnbufferedOutput, encoding_width

__all__ = ["RepackReport", "repack", "with_delta_bases"]


@dataclass
class RepackReport:
    encoded_loose: int = 0  # large loose objects stored canonical (fetched), now encoded
    digested: int = 0  # objects of encoded version 1 given version 2's digests, loose or packed
    packed_objects: int = 0
    packs_removed: int = 0
    loose_removed: int = 0
    dropped: list[str] = field(default_factory=list)  # packed objects ``keep`` refused
    dropped_bytes: int = 0  # their entries' sizes
    bytes_before: int = 0
    bytes_after: int = 0


def with_delta_bases(store: LocalStore, oids: set[str]) -> set[str]:
    """``oids`` and every delta base they need to be decoded, transitively."""
    closure = set(oids)
    todo = list(oids)
    while todo:
        stored = store.open_stored(todo.pop())
        if stored is None:
            continue
        base = stored.base_oid
        stored.close()
        if base is not None and base not in closure:
            closure.add(base)
            todo.append(base)
    return closure


def _older_form(stored: StoredObject) -> str | None:
    """How a stored object's form is older than the encoder's: "canonical" (fetched, say),
    "version 1" (an encoded object that version 2's digests are for, written before
    them), or None."""
    encoded = stored.encoded
    if encoded is None:
        return "canonical"
    canonical_size = len(encoded.canonical_header) + encoded.payload_length
    if not encoded.has_digests and version_for(canonical_size) == VERSION_DIGESTED:
        return "version 1"
    return None


def _stored_bytes(store: LocalStore, stored: StoredObject) -> tuple[bytes, bool]:
    """The object as it goes into the new pack, and whether it was given digests: an
    encoded object of version 1 gets them, a canonical one is encoded."""
    older = _older_form(stored) if store.compression else None
    if older == "version 1":
        out = io.BytesIO()
        write_digested(stored, out)
        return out.getvalue(), True
    raw = stored.read_stored()
    if older is None:
        return raw, False
    header = stored.header
    out = io.BytesIO()
    width = encoding_width(header.dtype, header.nbytes, header.data_offset)
    encoder = EncodingWriter(out, stored.canonical_header, header, width)
    encoder.write(memoryview(raw)[header.data_offset :])
    encoder.finish(stored.oid)
    return out.getvalue(), False


def repack(
    store: LocalStore,
    keep: Callable[[str], bool] = lambda oid: True,
    *,
    loose: bool = True,
    dry_run: bool = False,
) -> RepackReport:
    """Write one pack with every packed object that ``keep`` accepts, and (with ``loose``)
    every loose object smaller than a pack entry may be; then remove what it replaced.

    Packed objects that ``keep`` refuses are dropped: the caller (gc) makes
    sure no kept object needs them as a delta base.
    """
    report = RepackReport()
    packs = store.packs()
    small_loose: list[str] = []
    if loose:
        for oid in store.iter_loose_oids():
            size = store.object_path(oid).lstat().st_size
            if size < PACK_BELOW and keep(oid):
                small_loose.append(oid)
            elif size >= PACK_BELOW and store.compression:
                rewritten = _rewrite_loose(store, oid, dry_run)
                report.encoded_loose += rewritten == "encoded"
                report.digested += rewritten == "digested"
    if len(packs) + len(small_loose) <= 1 and all(
        keep(oid) for index in packs.values() for oid, _, _ in index.entries()
    ):
        return report  # already one pack (or nothing) holding only what is kept
    writer = PackWriter(store.tmp_dir)
    try:
        for pack, index in packs.items():
            report.bytes_before += pack.stat().st_size
            for oid, _offset, length in index.entries():
                if not keep(oid):
                    report.dropped.append(oid)
                    report.dropped_bytes += length
                elif writer.find(oid) is None:
                    report.digested += _add(store, writer, oid)
        for oid in small_loose:
            report.bytes_before += store.object_path(oid).lstat().st_size
            if writer.find(oid) is None:
                report.digested += _add(store, writer, oid)
        report.packed_objects = len(writer)
        report.bytes_after = writer.size if len(writer) else 0
        if dry_run:
            return report
        new_pack = writer.finish(store.packs_dir)
    finally:
        writer.abort()
    # Everything is in the new pack (or dropped on purpose): remove what it replaced.
    for pack in packs:
        if pack != new_pack:
            _remove_pack(pack)
            report.packs_removed += 1
    for oid in small_loose:
        store.object_path(oid).unlink(missing_ok=True)
        report.loose_removed += 1
    store.packs()  # forget the removed packs
    return report


def _add(store: LocalStore, writer: PackWriter, oid: str) -> bool:
    """Add ``oid`` to ``writer``; whether it was given digests on the way."""
    # The copy a lookup finds is the one copied, and every other is then deleted: a
    # damaged one (loose, say, beside a good packed one) would replace them all. It
    # raises instead, before anything is removed; fsck moves it aside.
    store.ensure_verified(oid)
    stored = store.open_stored(oid)
    if stored is None:
        return False
    try:
        data, digested = _stored_bytes(store, stored)
        writer.add(oid, data)
        return digested
    finally:
        stored.close()


def _remove_pack(pack: Path) -> None:
    # The index first: from then on no reader picks the pack up.
    pack.with_suffix(".idx").unlink(missing_ok=True)
    pack.unlink(missing_ok=True)


def _rewrite_loose(store: LocalStore, oid: str, dry_run: bool) -> str | None:
    """Replace a large loose object's file with the form the encoder writes now:
    "encoded" for a canonical one that compresses, "digested" for an encoded one of
    version 1 that version 2 is for (docs/store.md, rule 7); None when nothing changed.

    The new file is decoded and checked against the oid (and its digests) before it
    is renamed over the old one, so the object is readable, and the same object, all
    the time; a reader that has the old file open keeps reading it. An object that
    fails the check is left as it is, and named by the error.
    """
    stored = store.open_stored(oid)
    if stored is None:
        return None
    with stored:
        older = _older_form(stored)
        if older is None:
            return None
        rewritten = "encoded" if older == "canonical" else "digested"
        if dry_run and rewritten == "digested":
            return rewritten
        file, temp_path = store._open_temp()
        try:
            output = UnbufferedOutput(file)
            if rewritten == "encoded":
                if not _encode(stored, output):
                    return None
            else:
                write_digested(stored, output)
            file.close()
            if dry_run:
                return rewritten
            fd = os.open(temp_path, os.O_RDONLY)
            check = StoredObject(oid, fd, 0, os.fstat(fd).st_size, store.open_stored, owns_fd=True)
            with ObjectReader(check) as reader:
                reader.seek(0)
                while reader.read(COPY_CHUNK):
                    pass  # the reader checks the sha256 at the end, and each block's digests
            os.chmod(temp_path, 0o444)
            os.replace(temp_path, store.object_path(oid))
            return rewritten
        finally:
            file.close()
            temp_path.unlink(missing_ok=True)


def _encode(stored: StoredObject, output: UnbufferedOutput) -> bool:
    """Write canonical ``stored`` encoded to ``output``; False if that does not pay."""
    header = stored.header
    encoder = EncodingWriter(
        output, stored.canonical_header, header, width_for(header.dtype, header.nbytes)
    )
    offset = 0
    while offset < header.nbytes:
        chunk = stored.read_payload(offset, min(COPY_CHUNK, header.nbytes - offset))
        encoder.write(chunk)
        offset += len(chunk)
    encoder.finish(stored.oid)
    return not encoder.canonical
