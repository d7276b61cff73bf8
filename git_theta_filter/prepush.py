"""The pre-push hook's work: the tensor objects behind the commits being pushed.

Git's contract (githooks(5), pre-push): the hook is called with the remote's
name and URL as arguments, and reads lines on standard input::

    <local ref> SP <local sha> SP <remote ref> SP <remote sha> LF

A local sha of all zeros is a deletion. A non-zero exit stops the push before
any ref is updated.

So the objects are uploaded to the remote's store (remotes.py) here,
before git sends a single ref: a push whose upload fails is refused, and the
remote never names a tensor that its store lacks.

:func:`fill_store` does the moving, for this hook, ``git-remote-theta`` and
``git theta push`` alike: it asks the store which objects it lacks, uploads
those this clone has, and copies the others straight from another remote's
store (``transfer.relay``). A clone that checked out only the newest commit
can so push a whole history to a new remote.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ThetaError
from .gitrepo import GitRepo
from .history import manifests_in_blobs, objects_needed, open_pygit2
from .manifest import Manifest
from .object_sizes import object_size_candidates
from .progress import Progress
from .remotes import (
    HELPER_PREFIX,
    NoStoreError,
    remotes_to_try,
    resolve_store,
    transfer_workers,
)
from .store.base import ObjectStore, StoreError
from .store.transfer import TransferFailedError, TransferResult, relay, upload
from .upload_limits import refuse_oversized_objects

__all__ = [
    "ZERO_SHA",
    "RefUpdate",
    "parse_ref_updates",
    "manifests_to_push",
    "fill_store",
    "ObjectsMissingLocallyError",
    "PushUploadError",
    "PushUpload",
    "upload_for_push",
]

ZERO_SHA = "0" * 40


class ObjectsMissingLocallyError(ThetaError):
    """Commits being pushed need tensor objects that this clone does not have, nor (when
    ``tried`` names any) the stores of those remotes."""

    def __init__(self, oids: list[str], tried: list[str] | None = None) -> None:
        where = "in the local store"
        if tried:
            where += f" nor in the stores of {', '.join(repr(name) for name in tried)}"
        super().__init__(
            f"refusing to push: {len(oids)} tensor object(s) behind these commits are not {where}",
            hint="run `git theta push` in a clone that has them, "
            "or `git theta fsck --all` to see which files need them"
            if tried
            else "get them with `git theta fetch --all`, "
            "or run `git theta fsck` to see which files need them",
        )
        self.oids = oids
        self.tried = tried or []


class PushUploadError(ThetaError):
    """The objects behind a push could not be uploaded, so the push is refused."""

    def __init__(self, remote: str, url: str, cause: ThetaError) -> None:
        super().__init__(
            f"refusing to push to {remote!r}: uploading tensor objects to {url} failed: {cause}",
            hint=cause.hint,
        )
        self.remote = remote
        self.url = url
        self.cause = cause


@dataclass(frozen=True)
class RefUpdate:
    local_ref: str
    local_sha: str
    remote_ref: str
    remote_sha: str

    @property
    def is_delete(self) -> bool:
        return set(self.local_sha) == {"0"}


def parse_ref_updates(stdin: bytes) -> list[RefUpdate]:
    updates = []
    for line in stdin.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) == 4:
            updates.append(RefUpdate(*parts))
    return updates


def manifests_to_push(repo: GitRepo, remote: str, updates: list[RefUpdate]) -> list[Manifest]:
    """The manifests in ``rev-list --objects <local> ^<remote>``."""
    git = open_pygit2(repo)
    found: list[Manifest] = []
    for update in updates:
        if update.is_delete:
            continue
        if update.remote_sha in git and not set(update.remote_sha) == {"0"}:
            listing = repo.git(
                "rev-list", "--objects", revisions=[update.local_sha, f"^{update.remote_sha}"]
            )
        else:
            listing = repo.git(
                "rev-list",
                "--objects",
                "--not",
                f"--remotes={remote}",
                "--not",
                revisions=[update.local_sha],
            )
        blob_ids = [line.split(" ", 1)[0] for line in listing.splitlines() if " " in line]
        found.extend(manifests_in_blobs(git, blob_ids))
    return found


@dataclass(frozen=True)
class PushUpload:
    """What :func:`upload_for_push` did: ``store_url`` is None when there was no store to use."""

    wanted: int
    store_url: str | None
    result: TransferResult | None


def upload_for_push(
    repo: GitRepo,
    remote: str,
    remote_url: str | None,
    updates: list[RefUpdate],
    *,
    require_store: bool = False,
    progress: type[Progress] = Progress,
) -> PushUpload:
    """Make sure the remote's store has every object the pushed commits need.

    Raises :class:`ObjectsMissingLocallyError` or :class:`PushUploadError`; a
    push through ``theta::`` is left to git-remote-theta, which uploads itself.
    Without a store, nothing is uploaded unless ``require_store`` makes that an error.
    """
    manifests = manifests_to_push(repo, remote, updates)
    wanted = objects_needed(manifests)
    if not wanted or (remote_url or "").startswith(HELPER_PREFIX):
        return PushUpload(len(wanted), None, None)
    store = resolve_store(repo, remote, remote_url)
    if store is None:
        if require_store:
            raise NoStoreError(remote)
        local = repo.store()
        missing = sorted(oid for oid in wanted if not local.has(oid))
        if missing:
            raise ObjectsMissingLocallyError(missing)
        return PushUpload(len(wanted), None, None)
    commits = [update.local_sha for update in updates if not update.is_delete]
    result = fill_store(repo, remote, store, manifests, commits, progress=progress)
    return PushUpload(len(wanted), store.url, result)


def fill_store(
    repo: GitRepo,
    remote: str,
    store: ObjectStore,
    manifests: list[Manifest],
    commits: list[str],
    *,
    list_store: bool = False,
    progress: type[Progress] = Progress,
) -> TransferResult:
    """Make ``store`` (``remote``'s) hold every object the manifests name.

    The store is asked what it has (one listing with ``list_store``, else a batch
    existence check): objects it lacks are uploaded from the local store, or,
    when this clone does not have them, copied from the first other remote's
    store that does. ``commits`` are the commits pushed, for messages. Raises
    :class:`ObjectsMissingLocallyError` when no store has an object, before
    anything moves, and :class:`PushUploadError` when a transfer fails.
    """
    wanted = objects_needed(manifests)
    local = repo.store()
    workers = transfer_workers(repo)
    absent = {oid for oid in wanted if not local.has(oid)}
    sizes = object_size_candidates(manifests)
    copies: list[tuple[ObjectStore, set[str]]] = []
    here: dict[str, int] = {}
    try:
        if absent:
            store.prepare("download", {oid: sizes.get(oid, ()) for oid in absent})
            absent -= store.batch_has(sorted(absent))
            tried = []
            for name, source in remotes_to_try(repo, commits[0] if commits else None):
                if not absent:
                    break
                if name == remote or source.url == store.url:
                    continue
                tried.append(name)
                source.prepare("download", {oid: sizes.get(oid, ()) for oid in absent})
                found = source.batch_has(sorted(absent))
                if found:
                    copies.append((source, found))
                    absent -= found
            if absent:
                raise ObjectsMissingLocallyError(sorted(absent), tried)
        here = {oid: length for oid, length in wanted.items() if local.has(oid)}
        refuse_oversized_objects(repo, store, here, commits)
        result = upload(
            local, store, here, workers=workers, progress=progress, list_remote=list_store
        )
        for source, oids in copies:
            copied = relay(
                local,
                source,
                store,
                {oid: wanted[oid] for oid in oids},
                workers=workers,
                progress=progress,
                object_sizes=sizes,
            )
            result.transferred += copied.transferred
            result.transferred_bytes += copied.transferred_bytes
            result.skipped += copied.skipped
            result.copied += copied.copied
    except (StoreError, TransferFailedError) as exc:
        raise PushUploadError(remote, store.url, exc) from exc
    result.skipped += len(wanted) - len(here) - sum(len(oids) for _, oids in copies)
    return result
