"""The pre-push hook's work: the tensor objects behind the commits being pushed.

Git's contract (githooks(5), pre-push): the hook is called with the remote's
name and URL as arguments, and reads lines on standard input::

    <local ref> SP <local sha> SP <remote ref> SP <remote sha> LF

A local sha of all zeros is a deletion. A non-zero exit stops the push before
any ref is updated.

So the objects are uploaded to the remote's store (remotes.py) here,
before git sends a single ref: a push whose upload fails is refused, and the
remote never names a tensor that its store lacks.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ThetaError
from .gitrepo import GitRepo
from .history import manifests_in_blobs, open_pygit2
from .progress import Progress
from .remotes import HELPER_PREFIX, NoStoreError, resolve_store, transfer_workers
from .store.base import StoreError
from .store.transfer import TransferFailedError, TransferResult, upload
from .upload_limits import refuse_oversized_objects

__all__ = [
    "ZERO_SHA",
    "RefUpdate",
    "parse_ref_updates",
    "objects_to_push",
    "ObjectsMissingLocallyError",
    "PushUploadError",
    "PushUpload",
    "upload_for_push",
]

ZERO_SHA = "0" * 40


class ObjectsMissingLocallyError(ThetaError):
    """Commits being pushed need tensor objects that this clone does not have."""

    def __init__(self, oids: list[str]) -> None:
        super().__init__(
            f"refusing to push: {len(oids)} tensor object(s) behind these commits are not "
            "in the local store",
            hint="get them with `git theta fetch --all`, "
            "or run `git theta fsck` to see which files need them",
        )
        self.oids = oids


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


def objects_to_push(repo: GitRepo, remote: str, updates: list[RefUpdate]) -> dict[str, int]:
    """Object ids (with payload lengths) of the manifests in
    ``rev-list --objects <local> ^<remote>``.
    """
    git = open_pygit2(repo)
    wanted: dict[str, int] = {}
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
        for manifest in manifests_in_blobs(git, blob_ids):
            wanted.update(manifest.payload_lengths())
    return wanted


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
    wanted = objects_to_push(repo, remote, updates)
    local = repo.store()
    missing = sorted(oid for oid in wanted if not local.has(oid))
    if missing:
        raise ObjectsMissingLocallyError(missing)
    if not wanted or (remote_url or "").startswith(HELPER_PREFIX):
        return PushUpload(len(wanted), None, None)
    store = resolve_store(repo, remote, remote_url)
    if store is None:
        if require_store:
            raise NoStoreError(remote)
        return PushUpload(len(wanted), None, None)
    refuse_oversized_objects(
        repo, store, wanted, [update.local_sha for update in updates if not update.is_delete]
    )
    try:
        result = upload(local, store, wanted, workers=transfer_workers(repo), progress=progress)
    except (StoreError, TransferFailedError) as exc:
        raise PushUploadError(remote, store.url, exc) from exc
    return PushUpload(len(wanted), store.url, result)
