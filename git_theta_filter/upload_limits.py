"""Refusing, before any byte is sent, an upload of an object over the store's size limit.

Hosted Git LFS servers cap each object (GitHub: 2 GB on its free plans);
``theta.lfs.maxObjectSize`` tells theta the cap, and a store that has one
carries it as ``ObjectStore.max_object_size``. A tensor is one object, so the
refusal names the tensor and the file it is in, found in the commits pushed.
"""

from __future__ import annotations

from collections.abc import Iterable

import pygit2

from .errors import ThetaError
from .gitrepo import GitRepo
from .history import open_pygit2, tree_manifests
from .store.base import ObjectStore
from .units import human_bytes

__all__ = ["ObjectTooLargeError", "refuse_oversized_objects"]


class ObjectTooLargeError(ThetaError):
    """A tensor's object is larger than the store accepts; nothing was uploaded."""

    def __init__(
        self, store_url: str, oid: str, size: int, limit: int, path: str | None, tensor: str | None
    ) -> None:
        what = f"tensor {tensor!r} of {path}" if tensor else (path or "an object")
        super().__init__(
            f"refusing to upload {what} ({human_bytes(size)}, object {oid}) to {store_url}: "
            f"it is over theta.lfs.maxObjectSize ({human_bytes(limit)})",
            hint="keep that file in a store without the limit "
            "(`git config theta.remote.<remote>.url s3://bucket/prefix`), split the tensor, "
            "or raise theta.lfs.maxObjectSize if the server takes larger objects",
        )
        self.oid = oid
        self.size = size
        self.limit = limit
        self.path = path
        self.tensor = tensor


def _name_of(repo: GitRepo, oid: str, commits: Iterable[str]) -> tuple[str | None, str | None]:
    """The file and tensor that use ``oid`` in the trees of ``commits`` (first found)."""
    git = open_pygit2(repo)
    for sha in commits:
        try:
            commit = git[pygit2.Oid(hex=sha)].peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError):
            continue
        for ref in tree_manifests(git, commit.tree):
            for tensor in ref.manifest.tensors:
                if tensor.oid == oid:
                    return ref.path, tensor.name
            if oid in ref.manifest.object_ids():
                return ref.path, None
    return None, None


def refuse_oversized_objects(
    repo: GitRepo, store: ObjectStore, oids: Iterable[str], commits: Iterable[str]
) -> None:
    """Raise :class:`ObjectTooLargeError` for the largest object over the store's limit."""
    limit = store.max_object_size
    if limit is None:
        return
    local = repo.store()
    # What is uploaded is the canonical bytes (docs/store.md), not the local encoding.
    over = [(size, oid) for oid in oids if (size := local.canonical_size(oid) or 0) > limit]
    if not over:
        return
    size, oid = max(over)
    path, tensor = _name_of(repo, oid, commits)
    raise ObjectTooLargeError(store.url, oid, size, limit, path, tensor)
