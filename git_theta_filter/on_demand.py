"""Smudge's fallback: fetch the objects a manifest needs from the store, then continue.

The filter process asks for this only after the local store turned out to
lack an object. All the missing objects of that manifest come down in one
parallel batch. What the store does not have either is left missing, so the
smudge then fails with its usual message; a store that is unreachable or
serves a corrupt object is reported as such.
"""

from __future__ import annotations

from .gitrepo import GitRepo
from .manifest import Manifest
from .object_sizes import object_size_candidates
from .remotes import default_remote, resolve_store, transfer_workers
from .store.base import ObjectStore, RemoteObjectMissingError
from .store.transfer import TransferFailedError, download

__all__ = ["OnDemandFetcher"]


class OnDemandFetcher:
    """Resolves the repository's store once, on first need, and downloads from it."""

    def __init__(self, repo: GitRepo) -> None:
        self._repo = repo
        self._local = repo.store()
        self._store: ObjectStore | None = None
        self._resolved = False

    def _remote_store(self) -> ObjectStore | None:
        if not self._resolved:
            self._store = resolve_store(self._repo, default_remote(self._repo))
            self._resolved = True
        return self._store

    def fetch_missing(self, manifest_bytes: bytes) -> None:
        """Download what the manifest needs and the local store lacks,
        as far as the store has it.
        """
        manifest = Manifest.parse(manifest_bytes)
        lengths = manifest.payload_lengths()
        missing = {oid: length for oid, length in lengths.items() if not self._local.has(oid)}
        # Finding the store runs git; a manifest whose objects are all here needs none.
        store = self._remote_store() if missing else None
        if store is None:
            return
        try:
            download(
                self._local,
                store,
                missing,
                workers=transfer_workers(self._repo),
                object_sizes=object_size_candidates([manifest]),
            )
        except TransferFailedError as exc:
            if not all(
                isinstance(error, RemoteObjectMissingError) for error in exc.failures.values()
            ):
                raise
