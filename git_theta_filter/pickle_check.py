"""``git theta fsck --check-pickles``: the code each tracked checkpoint would run on load.

``torch.load(weights_only=False)`` and ``pickle.load`` call every global that
a ``data.pkl`` names. This lists, for each version of a model file, the
globals that are not on :data:`formats.pickle_scan.ALLOWED_GLOBALS` (the inert
set a plain state_dict uses). ``data.pkl`` is read back from the skeleton
object and only ever given to the restricted scanner, which runs nothing.

A file stored opaque is not a zip, so it has no ``data.pkl``; when its first
byte is the pickle PROTO opcode (torch's legacy format, or a bare pickle) it
is reported as unchecked, since loading it could run anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ThetaError
from .formats.base import NotThisFormat
from .formats.layout import read_skeleton
from .formats.pickle_scan import scan_pickle
from .formats.zip_directory import read_data_pkl_record, read_zip_directory
from .gitrepo import GitRepo
from .inventory import referenced_manifests
from .manifest import Manifest
from .store.local import LocalStore
from .store.object_format import ObjectFormatError

__all__ = ["PickleReport", "DataPklError", "read_data_pkl", "check_pickles"]

_PICKLE_PROTO = 0x80


class DataPklError(ThetaError):
    """A torch-zip file's data.pkl cannot be read back from its objects."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: cannot read data.pkl: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class PickleReport:
    """One version (blob) of a tracked file."""

    path: str
    blob_id: str
    foreign_globals: list[str] = field(default_factory=list)
    # Why the file's globals could not be listed; None when they were.
    unchecked: str | None = None

    @property
    def suspicious(self) -> bool:
        return bool(self.foreign_globals) or self.unchecked is not None


def read_data_pkl(store: LocalStore, manifest: Manifest, path: str) -> bytes:
    """The bytes of a torch-zip file's data.pkl, its first record, read by the reader clean
    and the merge driver use (``formats/zip_directory.py``): never inflated, never more
    than the skeleton holds."""
    skeleton = read_skeleton(store, manifest, path)
    try:
        directory = read_zip_directory(skeleton, manifest.splices, manifest.size)
        return read_data_pkl_record(skeleton, manifest.splices, manifest.size, directory)
    except NotThisFormat as exc:
        raise DataPklError(path, str(exc)) from None


def _first_byte(store: LocalStore, manifest: Manifest, path: str) -> int | None:
    """The file's first byte, for an opaque file: the start of its one object's payload."""
    if not manifest.splices or manifest.splices[0].offset != 0 or not manifest.splices[0].length:
        return None
    splice = manifest.splices[0]
    file, header = store.open_object(splice.oid, path)
    with file:
        if header.nbytes != splice.length:
            raise ObjectFormatError(
                splice.oid, f"payload is {header.nbytes} bytes, the manifest says {splice.length}"
            )
        return file.read(1)[0]


def _check_one(store: LocalStore, manifest: Manifest, path: str, blob_id: str) -> PickleReport:
    report = PickleReport(path, blob_id)
    try:
        if manifest.format == "opaque":
            if _first_byte(store, manifest, path) == _PICKLE_PROTO:
                report.unchecked = (
                    "a bare pickle stream (e.g. torch's legacy format), stored opaque"
                )
        elif manifest.format == "torch-zip":
            report.foreign_globals = sorted(
                scan_pickle(read_data_pkl(store, manifest, path)).foreign_globals
            )
    except ThetaError as exc:  # a missing or corrupt object, or an unreadable data.pkl
        report.unchecked = str(exc)
    return report


def check_pickles(repo: GitRepo, all_refs: bool) -> list[PickleReport]:
    """Every model file of the index and HEAD (or of all history), in path order."""
    store = repo.store()
    refs = sorted(referenced_manifests(repo, all_refs), key=lambda ref: (ref.path, ref.blob_id))
    return [_check_one(store, ref.manifest, ref.path, ref.blob_id) for ref in refs]
