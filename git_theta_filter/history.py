"""Finding manifests in Git: in the index, in trees, and across history (via pygit2).

A blob is a manifest when it starts with the manifest magic and parses; the
blob's size is read from the object header first, so large non-manifest
blobs are never loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pygit2

from .gitrepo import GitRepo
from .manifest import MAGIC, MAX_MANIFEST_BYTES, Manifest, ManifestError

__all__ = [
    "ManifestRef",
    "open_pygit2",
    "read_manifest_blob",
    "index_manifests",
    "tree_manifests",
    "reachable_manifests",
    "manifests_in_blobs",
]


@dataclass(frozen=True)
class ManifestRef:
    path: str
    blob_id: str
    manifest: Manifest


def open_pygit2(repo: GitRepo) -> pygit2.Repository:
    return pygit2.Repository(str(repo.git_dir))


def read_manifest_blob(git: pygit2.Repository, blob_id: pygit2.Oid | str) -> Manifest | None:
    """The manifest in a blob, or None when the blob is not one."""
    oid = pygit2.Oid(hex=blob_id) if isinstance(blob_id, str) else blob_id
    try:
        kind, size = git.odb.read_header(oid)
    except KeyError:
        return None
    if kind != pygit2.enums.ObjectType.BLOB or size > MAX_MANIFEST_BYTES or size < len(MAGIC):
        return None
    data = git[oid].data
    if not data.startswith(MAGIC):
        return None
    try:
        return Manifest.parse(data)
    except ManifestError:
        return None


def index_manifests(repo: GitRepo, git: pygit2.Repository | None = None) -> list[ManifestRef]:
    git = git or open_pygit2(repo)
    index = git.index
    refs = []
    for entry in index:
        manifest = read_manifest_blob(git, entry.id)
        if manifest is not None:
            refs.append(ManifestRef(entry.path, str(entry.id), manifest))
    return refs


def tree_manifests(
    git: pygit2.Repository, tree: pygit2.Tree, prefix: str = ""
) -> Iterator[ManifestRef]:
    for entry in tree:
        path = f"{prefix}{entry.name}"
        if entry.type == pygit2.enums.ObjectType.TREE:
            yield from tree_manifests(git, git[entry.id], path + "/")
        elif entry.type == pygit2.enums.ObjectType.BLOB:
            manifest = read_manifest_blob(git, entry.id)
            if manifest is not None:
                yield ManifestRef(path, str(entry.id), manifest)


def reachable_manifests(
    git: pygit2.Repository, tips: Iterable[pygit2.Oid]
) -> dict[str, ManifestRef]:
    """Every distinct manifest blob in the history of ``tips``, keyed by blob id.

    Trees already visited are skipped, so the walk costs one visit per distinct tree.
    """
    seen_trees: set[pygit2.Oid] = set()
    seen_blobs: set[pygit2.Oid] = set()
    found: dict[str, ManifestRef] = {}
    walker = None
    for tip in tips:
        if walker is None:
            walker = git.walk(tip, pygit2.enums.SortMode.NONE)
        else:
            walker.push(tip)
    if walker is None:
        return found

    def visit(tree: pygit2.Tree, prefix: str) -> None:
        if tree.id in seen_trees:
            return
        seen_trees.add(tree.id)
        for entry in tree:
            if entry.type == pygit2.enums.ObjectType.TREE:
                visit(git[entry.id], f"{prefix}{entry.name}/")
            elif entry.type == pygit2.enums.ObjectType.BLOB and entry.id not in seen_blobs:
                seen_blobs.add(entry.id)
                manifest = read_manifest_blob(git, entry.id)
                if manifest is not None:
                    found[str(entry.id)] = ManifestRef(
                        f"{prefix}{entry.name}", str(entry.id), manifest
                    )

    for commit in walker:
        visit(commit.tree, "")
    return found


def manifests_in_blobs(git: pygit2.Repository, blob_ids: Iterable[str]) -> list[Manifest]:
    out = []
    for blob_id in blob_ids:
        manifest = read_manifest_blob(git, blob_id)
        if manifest is not None:
            out.append(manifest)
    return out
