"""Smudge's fallback: fetch the objects a manifest needs from the remotes' stores, then continue.

The filter process asks for this only after the local store turned out to
lack an object. A repository may have several remotes (a fork and its
upstream, a mirror), each with its own store, so every remote that has a
store is asked in turn (``remotes.remotes_in_lookup_order``): first those whose
remote-tracking refs contain the commit being read, then the current branch's
remote, then the rest. Each store is asked for all that is still missing in
one parallel batch, and is opened only when the ones before it did not have
everything. What no store has is left missing, and the smudge then fails with
:class:`ObjectInNoStoreError`, which says where it looked and what fixes it;
a store that is unreachable or serves a corrupt object is reported as such.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence

from .errors import ThetaError
from .gitrepo import GitRepo, is_git_object_id
from .manifest import Manifest
from .object_sizes import object_size_candidates
from .remotes import default_remote, remotes_to_try, transfer_workers
from .store.base import ObjectStore, RemoteObjectMissingError, StoreUnavailableError
from .store.local import ObjectMissingError
from .store.transfer import TransferFailedError, TransferResult, download

__all__ = ["ObjectInNoStoreError", "OnDemandFetcher", "as_commit", "incoming_commit"]


class ObjectInNoStoreError(ObjectMissingError):
    """An object that neither the local store nor any remote's store has.

    ``tried`` names the remotes whose stores were asked; when it is empty, no
    remote has a store and ``remote`` is the one that should get one.
    """

    def __init__(self, oid: str, path: str | None, tried: list[str], remote: str) -> None:
        where = f"{path}: " if path else ""
        hint: str | None
        if tried:
            names = ", ".join(repr(name) for name in tried)
            message = f"{where}tensor object {oid} is in no remote's store (tried {names})"
            hint = (
                "it was never uploaded: run `git theta push` in a clone that has it "
                "(the one that made the commit), then try again"
            )
        else:
            message = (
                f"{where}tensor object {oid} is missing from the local store, "
                "and no remote has an object store"
            )
            hint = (
                f"set `git config theta.remote.{remote}.url <path|s3://bucket/prefix>` to a "
                "store that has it (docs/remotes.md), or set GIT_THETA_SKIP_SMUDGE=1 to check "
                "out the manifest instead"
            )
        ThetaError.__init__(self, message, hint=hint)
        self.oid = oid
        self.path = path
        self.tried = tried


def as_commit(value: str | None) -> str | None:
    """``value`` when it is a full commit id (as git names the commit it checks out), else None."""
    return value if value is not None and is_git_object_id(value) else None


# What git records while it brings another commit in: a merge, cherry-pick, revert, rebase.
_INCOMING_HEADS = ("MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD", "REBASE_HEAD")


def incoming_commit(repo: GitRepo) -> str | None:
    """The commit a merge (cherry-pick, revert, rebase) in progress brings in, if any.

    While ``git merge`` runs a merge driver, it names each commit it merges in
    an environment variable ``GITHEAD_<commit id>``; the ``*_HEAD`` files are
    written only when an operation stops.
    """
    for name in os.environ:
        commit = as_commit(name.removeprefix("GITHEAD_")) if name.startswith("GITHEAD_") else None
        if commit is not None:
            return commit
    for head in _INCOMING_HEADS:
        found = repo.git(
            "rev-parse", "--quiet", "--verify", revisions=[f"{head}^{{commit}}"], check=False
        )
        if found.strip():
            return found.strip()
    return None


class OnDemandFetcher:
    """Finds the remotes' stores on first need, and downloads from them.

    ``commit``, when known, is the commit whose files are read: remotes that
    have it are asked first.
    """

    def __init__(self, repo: GitRepo, commit: str | None = None) -> None:
        self._repo = repo
        self._local = repo.store()
        self._commit = as_commit(commit)
        self._stores: list[tuple[str, ObjectStore]] = []
        self._more: Iterator[tuple[str, ObjectStore]] | None = None
        self._unreachable: list[StoreUnavailableError] = []

    def _candidates(self) -> Iterator[tuple[str, ObjectStore]]:
        """The stores in lookup order, each opened once, and only when it is reached."""
        yield from self._stores
        if self._more is None:
            self._more = remotes_to_try(self._repo, self._commit)
        for found in self._more:
            self._stores.append(found)
            yield found

    def reading(self, commit: str | None) -> None:
        """Files of ``commit`` are read from now on (None: not known); its remotes come first."""
        commit = as_commit(commit)
        if commit != self._commit:
            self._commit = commit
            self._stores, self._more = [], None

    def tried(self) -> list[str]:
        """The remotes whose stores were (or would be) asked, in order."""
        return [remote for remote, _ in self._candidates()]

    def fetch_missing(self, manifest_bytes: bytes) -> None:
        """Download what the manifest needs and the local store lacks, from the first store
        that has each object, as far as any has it."""
        manifest = Manifest.parse(manifest_bytes)
        self.fetch(manifest.payload_lengths(), object_size_candidates([manifest]))

    def fetch(
        self, wanted: Mapping[str, int], sizes: Mapping[str, Sequence[int]]
    ) -> TransferResult:
        """Download the objects of ``wanted`` (oid -> payload length) that the local store
        lacks, each from the first store that has it; ``sizes`` as for :func:`download`."""
        missing = {oid: length for oid, length in wanted.items() if not self._local.has(oid)}
        total = TransferResult(skipped=len(wanted) - len(missing))
        if not missing:
            return total  # finding the stores runs git: what is all here needs none
        self._unreachable = []
        for _, store in self._candidates():
            try:
                moved = download(
                    self._local,
                    store,
                    missing,
                    workers=transfer_workers(self._repo),
                    object_sizes=sizes,
                )
                total.transferred += moved.transferred
                total.transferred_bytes += moved.transferred_bytes
            except StoreUnavailableError as exc:
                # Another remote's store may have it; if none does, this is the error.
                self._unreachable.append(exc)
            except TransferFailedError as exc:
                if not all(
                    isinstance(error, RemoteObjectMissingError) for error in exc.failures.values()
                ):
                    raise
            missing = {oid: length for oid, length in missing.items() if not self._local.has(oid)}
            if not missing:
                break
        return total

    def unavailable(self, error: ObjectMissingError) -> ThetaError:
        """The error to raise for an object still missing after :meth:`fetch_missing`:
        a store that could not be reached, else where it was looked for."""
        if self._unreachable:
            return self._unreachable[0]
        return ObjectInNoStoreError(error.oid, error.path, self.tried(), default_remote(self._repo))
