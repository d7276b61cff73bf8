"""Finding manifests in Git: in the index, in trees, and across history (via pygit2).

A blob is a manifest when it starts with the manifest magic and parses; the
blob's size is read from the object header first, so large non-manifest
blobs are never loaded.

In a partial clone a tree or blob may not be local. An absent object is never
taken for "not a manifest": the walkers here collect the ids they will read
and fetch the absent ones in one batch (:mod:`promisor`); a single read that
finds its blob absent fetches it alone. What cannot be fetched is an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pygit2

from .gitrepo import GitRepo
from .manifest import MAGIC, MAX_MANIFEST_BYTES, Manifest, ManifestError
from .promisor import fetch_missing

__all__ = [
    "ManifestRef",
    "open_pygit2",
    "read_manifest_blob",
    "index_manifests",
    "tree_manifests",
    "reachable_manifests",
    "manifests_in_blobs",
    "read_blob",
    "lookup_tree",
    "tree_blobs",
]


@dataclass(frozen=True)
class ManifestRef:
    path: str
    blob_id: str
    manifest: Manifest


def open_pygit2(repo: GitRepo) -> pygit2.Repository:
    return pygit2.Repository(str(repo.git_dir))


def read_blob(git: pygit2.Repository, blob_id: pygit2.Oid | str) -> bytes:
    """A blob's bytes, fetched first if a partial clone left it out."""
    oid = pygit2.Oid(hex=blob_id) if isinstance(blob_id, str) else blob_id
    fetch_missing(git, [oid])
    return git[oid].peel(pygit2.Blob).data


def lookup_tree(git: pygit2.Repository, tree_id: pygit2.Oid) -> pygit2.Tree:
    """A tree, fetched first (with the trees below it) if a partial clone left it out."""
    fetch_missing(git, [tree_id])
    return git[tree_id].peel(pygit2.Tree)


def read_manifest_blob(git: pygit2.Repository, blob_id: pygit2.Oid | str) -> Manifest | None:
    """The manifest in a blob, or None when the blob is not one.

    A blob that is not local is fetched (:mod:`promisor`) or raises
    :class:`promisor.GitObjectsUnavailableError`; it is never "not a manifest".
    """
    oid = pygit2.Oid(hex=blob_id) if isinstance(blob_id, str) else blob_id
    try:
        kind, size = git.odb.read_header(oid)
    except KeyError:
        fetch_missing(git, [oid])
        kind, size = git.odb.read_header(oid)
    if kind != pygit2.enums.ObjectType.BLOB or size > MAX_MANIFEST_BYTES or size < len(MAGIC):
        return None
    # The header says it is a blob; pygit2's stubs type any object looked up as Object.
    data = git[oid].data  # type: ignore[attr-defined]
    if not data.startswith(MAGIC):
        return None
    try:
        return Manifest.parse(data)
    except ManifestError:
        return None


def index_manifests(repo: GitRepo, git: pygit2.Repository | None = None) -> list[ManifestRef]:
    git = git or open_pygit2(repo)
    entries = list(git.index)
    fetch_missing(git, (entry.id for entry in entries))
    refs = []
    for entry in entries:
        manifest = read_manifest_blob(git, entry.id)
        if manifest is not None:
            refs.append(ManifestRef(entry.path, str(entry.id), manifest))
    return refs


def tree_blobs(
    git: pygit2.Repository, tree: pygit2.Tree, prefix: str = ""
) -> Iterator[tuple[str, pygit2.Oid]]:
    """``(path, blob id)`` of every file below ``tree``, fetching absent subtrees.

    Depth first, in tree order, with a stack rather than recursion: git commits
    and checks out paths nested far deeper than Python's recursion limit.
    """
    stack = [(iter(tree), prefix)]
    while stack:
        entries, prefix = stack[-1]
        for entry in entries:
            path = f"{prefix}{entry.name}"
            if entry.type == pygit2.enums.ObjectType.TREE:
                stack.append((iter(lookup_tree(git, entry.id)), path + "/"))
                break
            if entry.type == pygit2.enums.ObjectType.BLOB:
                yield path, entry.id
        else:
            stack.pop()


def tree_manifests(
    git: pygit2.Repository, tree: pygit2.Tree, prefix: str = ""
) -> Iterator[ManifestRef]:
    files = list(tree_blobs(git, tree, prefix))
    fetch_missing(git, (blob_id for _, blob_id in files))
    for path, blob_id in files:
        manifest = read_manifest_blob(git, blob_id)
        if manifest is not None:
            yield ManifestRef(path, str(blob_id), manifest)


def reachable_manifests(
    git: pygit2.Repository, tips: Iterable[pygit2.Oid]
) -> dict[str, ManifestRef]:
    """Every distinct manifest blob in the history of ``tips``, keyed by blob id.

    Trees already visited are skipped, so the walk costs one visit per distinct tree.
    In a partial clone the absent trees, then the absent blobs, come down in a
    batch each.
    """
    walker = None
    for tip in tips:
        if walker is None:
            walker = git.walk(tip, pygit2.enums.SortMode.NONE)
        else:
            walker.push(tip)
    if walker is None:
        return {}
    root_trees = [commit.tree_id for commit in walker]
    fetch_missing(git, root_trees)
    seen_trees: set[pygit2.Oid] = set()
    blobs: dict[pygit2.Oid, str] = {}  # blob id -> the first path it was met at

    def visit(tree: pygit2.Tree) -> None:
        """Depth first, with a stack as in :func:`tree_blobs`."""
        stack = [(iter(tree), "")]
        while stack:
            entries, prefix = stack[-1]
            for entry in entries:
                if entry.type == pygit2.enums.ObjectType.TREE:
                    if entry.id not in seen_trees:
                        seen_trees.add(entry.id)
                        stack.append((iter(lookup_tree(git, entry.id)), f"{prefix}{entry.name}/"))
                        break
                elif entry.type == pygit2.enums.ObjectType.BLOB:
                    blobs.setdefault(entry.id, f"{prefix}{entry.name}")
            else:
                stack.pop()

    for tree_id in root_trees:
        if tree_id not in seen_trees:
            seen_trees.add(tree_id)
            visit(lookup_tree(git, tree_id))
    fetch_missing(git, blobs)
    found: dict[str, ManifestRef] = {}
    for blob_id, path in blobs.items():
        manifest = read_manifest_blob(git, blob_id)
        if manifest is not None:
            found[str(blob_id)] = ManifestRef(path, str(blob_id), manifest)
    return found


def manifests_in_blobs(git: pygit2.Repository, blob_ids: Iterable[str]) -> list[Manifest]:
    blob_ids = list(blob_ids)
    fetch_missing(git, (pygit2.Oid(hex=blob_id) for blob_id in blob_ids))
    out = []
    for blob_id in blob_ids:
        manifest = read_manifest_blob(git, blob_id)
        if manifest is not None:
            out.append(manifest)
    return out


def all_ref_tips(git: pygit2.Repository) -> list[pygit2.Oid]:
    """The commit every ref points to; refs to trees or blobs, and dangling ones, are skipped."""
    tips = []
    for name in git.references:
        try:
            target = git.references[name].peel(pygit2.Commit)
        except (pygit2.InvalidSpecError, ValueError, KeyError):
            continue
        tips.append(target.id)
    return tips


def objects_needed(manifests: Iterable[Manifest]) -> dict[str, int]:
    """Every object the manifests name (payloads and skeletons), with its payload length."""
    lengths: dict[str, int] = {}
    for manifest in manifests:
        lengths.update(manifest.payload_lengths())
    return lengths
