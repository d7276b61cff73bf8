"""What the store holds and what history needs: ls-files, du and fsck."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pygit2

from .errors import ThetaError
from .gitrepo import GitRepo
from .history import (
    ManifestRef,
    all_ref_tips,
    index_manifests,
    objects_needed,
    open_pygit2,
    reachable_manifests,
    read_manifest_blob,
    tree_manifests,
)
from .manifest import Manifest

__all__ = ["FileEntry", "list_files", "DiskUsage", "disk_usage", "FsckReport", "fsck"]


@dataclass
class FileEntry:
    path: str
    format: str
    tensors: int
    size: int
    new_bytes: int  # see docs/store.md, "Sizes"
    missing_objects: int


def _payload_bytes(manifest: Manifest, oids: set[str]) -> int:
    """The payload bytes of ``oids``, as ``manifest`` records them (no object is read)."""
    lengths = manifest.payload_lengths()
    return sum(lengths.get(oid, 0) for oid in oids)


def _previous_version(git: pygit2.Repository, path: str, current_blob: str) -> Manifest | None:
    """The version of ``path`` before ``current_blob``, following HEAD's first parents."""
    if git.head_is_unborn:
        return None
    commit = git.head.peel(pygit2.Commit)
    while True:
        try:
            blob_id = str(commit.tree[path].id)
        except KeyError:
            return None
        if blob_id != current_blob:
            return read_manifest_blob(git, blob_id)
        if not commit.parents:
            return None
        commit = commit.parents[0]


def list_files(repo: GitRepo) -> list[FileEntry]:
    """The tracked model files in the index, with the bytes each version brought in
    over the previous version on HEAD's first-parent line ("new", docs/store.md).
    """
    git = open_pygit2(repo)
    store = repo.store()
    entries = []
    for ref in index_manifests(repo, git):
        manifest = ref.manifest
        previous = _previous_version(git, ref.path, ref.blob_id)
        new_oids = manifest.object_ids() - (previous.object_ids() if previous else set())
        entries.append(
            FileEntry(
                path=ref.path,
                format=manifest.format,
                tensors=len(manifest.tensors),
                size=manifest.size,
                new_bytes=_payload_bytes(manifest, new_oids),
                missing_objects=sum(not store.has(oid) for oid in manifest.object_ids()),
            )
        )
    return entries


def referenced_manifests(
    repo: GitRepo, all_refs: bool, git: pygit2.Repository | None = None
) -> list[ManifestRef]:
    """Manifests of the index plus HEAD, or plus every ref's history."""
    git = git or open_pygit2(repo)
    found: dict[str, ManifestRef] = {ref.blob_id: ref for ref in index_manifests(repo, git)}
    if all_refs:
        found.update(reachable_manifests(git, all_ref_tips(git)))
    elif not git.head_is_unborn:
        for ref in tree_manifests(git, git.head.peel(pygit2.Commit).tree):
            found.setdefault(ref.blob_id, ref)
    return list(found.values())


@dataclass
class DiskUsage:
    file_versions: int
    logical_bytes: int
    referenced_objects: int
    referenced_bytes: int
    missing_objects: int
    store_objects: int
    store_bytes: int

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.referenced_bytes if self.referenced_bytes else 0.0


def disk_usage(repo: GitRepo) -> DiskUsage:
    refs = referenced_manifests(repo, all_refs=True)
    store = repo.store()
    lengths = objects_needed(ref.manifest for ref in refs)
    sizes = {oid: store.size(oid) for oid in lengths}
    all_stored = {oid: store.size(oid) or 0 for oid in store.iter_oids()}
    return DiskUsage(
        file_versions=len(refs),
        logical_bytes=sum(ref.manifest.size for ref in refs),
        referenced_objects=len(lengths),
        referenced_bytes=sum(size for size in sizes.values() if size is not None),
        missing_objects=sum(size is None for size in sizes.values()),
        store_objects=len(all_stored),
        store_bytes=sum(all_stored.values()),
    )


@dataclass
class FsckReport:
    checked: int = 0
    corrupt: dict[str, str] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    # Where each corrupt object was moved (see LocalStore.quarantine).
    quarantined: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


def fsck(
    repo: GitRepo, all_refs: bool, on_progress: Callable[[int, int], None] | None = None
) -> FsckReport:
    """Re-hash every stored object, and look for the objects that manifests need.

    A corrupt object is moved out of the store, so that `git theta fetch` (or
    the next checkout's on-demand fetch) can put a good copy in its place.
    """
    store = repo.store()
    report = FsckReport()
    loose = list(store.iter_loose_oids())
    packs = store.packs()
    total = len(loose) + sum(index.count for index in packs.values())

    def checked() -> None:
        report.checked += 1
        if on_progress:
            on_progress(report.checked, total)

    for oid in loose:
        try:
            store.verify(oid)  # decodes a delta's whole chain, so a missing base shows here
        except ThetaError as exc:
            report.corrupt[oid] = getattr(exc, "reason", str(exc))
            report.quarantined[oid] = str(store.quarantine(oid))
        checked()
    for pack, index in packs.items():
        # A pack is never rewritten, so one bad entry sends the whole pack aside;
        # its good objects are then missing, and fetched again like the bad one.
        for oid, _offset, _length in index.entries():
            try:
                store.verify_packed(pack, oid)
            except ThetaError as exc:
                report.corrupt[oid] = getattr(exc, "reason", str(exc))
                report.quarantined[oid] = str(store.quarantine_pack(pack))
                break
            finally:
                checked()
    for pack, error in store.broken_packs().items():
        report.corrupt[pack.name] = error.reason
        report.quarantined[pack.name] = str(store.quarantine_pack(pack))
    # A corrupt object is reported as such, not also as missing; the good objects of
    # a pack moved aside are missing now.
    present = set(store.iter_oids()) | set(report.corrupt)
    for ref in referenced_manifests(repo, all_refs):
        for oid in sorted(ref.manifest.object_ids() - present):
            report.missing.setdefault(oid, []).append(ref.path)
    return report
