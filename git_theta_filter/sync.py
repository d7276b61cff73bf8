"""Push, fetch and pull of tensor objects: which objects some refs need, and moving them.

The commands ``git theta push/fetch/pull`` are thin wrappers over these
functions. The pre-push hook and ``git-remote-theta`` upload through
:mod:`prepush`; the filter fetches through :mod:`on_demand`.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

import pygit2

from .gitrepo import GitRepo
from .history import (
    ManifestRef,
    all_ref_tips,
    index_manifests,
    objects_needed,
    open_pygit2,
    reachable_manifests,
    tree_manifests,
)
from .installation import require_filter
from .manifest import Manifest
from .object_sizes import object_size_candidates
from .on_demand import OnDemandFetcher
from .prepush import fill_store
from .progress import Progress
from .remotes import NoStoreError, locate_store, require_store, transfer_workers
from .revisions import BadRevisionError
from .smudge import prepare_smudge, write_atomically
from .store.local import ObjectMissingError
from .store.transfer import TransferResult, download

__all__ = [
    "PullResult",
    "push_objects",
    "objects_for_fetch",
    "fetch_objects",
    "pull",
]


def _commit_id(repo: GitRepo, revision: str) -> str:
    sha = repo.git(
        "rev-parse", "--verify", "--quiet", revisions=[f"{revision}^{{commit}}"], check=False
    ).strip()
    if not sha:
        raise BadRevisionError(revision)
    return sha


def _tips(repo: GitRepo, git: pygit2.Repository, refs: list[str]) -> list[pygit2.Oid]:
    if refs:
        return [pygit2.Oid(hex=_commit_id(repo, ref)) for ref in refs]
    return all_ref_tips(git)


def push_objects(
    repo: GitRepo,
    remote: str,
    refs: list[str],
    *,
    all_refs: bool = False,
    progress: type[Progress] = Progress,
) -> tuple[TransferResult, str]:
    """Make ``remote``'s store hold every object that the history of ``refs`` needs
    (default HEAD; with ``all_refs`` and no refs, every ref's history).

    What the store holds is asked of the store itself, not read from the
    remote-tracking refs: so this repairs a push that skipped the pre-push hook
    (``git push --no-verify``, a machine without theta). Objects this clone
    lacks are copied from another remote's store (:func:`prepush.fill_store`).
    Returns what moved and the store's URL.
    """
    store = require_store(repo, remote)
    git = open_pygit2(repo)
    tips = _tips(repo, git, refs or ([] if all_refs else ["HEAD"]))
    manifests = [ref.manifest for ref in reachable_manifests(git, tips).values()]
    commits = [str(tip) for tip in tips]
    result = fill_store(
        repo, remote, store, manifests, commits, list_store=all_refs, progress=progress
    )
    return result, store.url


def objects_for_fetch(
    repo: GitRepo, refs: list[str], *, all_history: bool = False
) -> dict[str, int]:
    """Objects (with payload lengths) of the manifests in the trees of ``refs`` (default HEAD);
    with ``all_history``, in their whole history (all refs when none are given)."""
    return objects_needed(_manifests_for_fetch(repo, refs, all_history=all_history))


def _manifests_for_fetch(repo: GitRepo, refs: list[str], *, all_history: bool) -> list[Manifest]:
    git = open_pygit2(repo)
    if all_history:
        found = list(reachable_manifests(git, _tips(repo, git, refs)).values())
    else:
        found = []
        for ref in refs or ["HEAD"]:
            commit = git[pygit2.Oid(hex=_commit_id(repo, ref))].peel(pygit2.Commit)
            found.extend(tree_manifests(git, commit.tree))
    return [ref.manifest for ref in found]


def fetch_objects(
    repo: GitRepo, remote: str | None, refs: list[str], *, all_history: bool = False
) -> TransferResult:
    """Download the objects of the files in ``refs`` (default HEAD; with ``all_history``,
    of their whole history) that the local store lacks, from ``remote``'s store, or with
    no ``remote`` from every remote's store in lookup order (docs/remotes.md)."""
    manifests = _manifests_for_fetch(repo, refs, all_history=all_history)
    commit = _commit_id(repo, refs[0]) if refs else None
    return _download(repo, remote, manifests, commit)


def _download(
    repo: GitRepo, remote: str | None, manifests: list[Manifest], commit: str | None
) -> TransferResult:
    """What the manifests need and the local store lacks: from ``remote``'s store, or from
    the first remote's store that has each object."""
    wanted = objects_needed(manifests)
    sizes = object_size_candidates(manifests)
    local = repo.store()
    if remote is not None:
        if all(local.has(oid) for oid in wanted):
            # Nothing to download, so the store is not opened (that may contact it);
            # a remote that has none is still an error, whatever is here already.
            if locate_store(repo, remote) is None:
                raise NoStoreError(remote)
            return TransferResult(skipped=len(wanted))
        workers = transfer_workers(repo)
        return download(
            local, require_store(repo, remote), wanted, workers=workers, object_sizes=sizes
        )
    fetcher = OnDemandFetcher(repo, commit)
    result = fetcher.fetch(wanted, sizes)
    missing = sorted(oid for oid in wanted if not local.has(oid))
    if missing:
        raise fetcher.unavailable(ObjectMissingError(missing[0]))
    return result


@dataclass
class PullResult:
    transfer: TransferResult
    written: list[str] = field(default_factory=list)


def pull(repo: GitRepo, remote: str | None) -> PullResult:
    """Fetch the objects of the checked-out files, then write every file that is still a manifest.

    Writing the files here, rather than through ``git checkout``, streams them
    from the store to disk: git would hold each whole smudged file in memory.
    The index's stat data is refreshed afterwards so ``git status`` stays clean.
    Objects come from ``remote``'s store, or with no ``remote`` from every
    remote's (as :func:`fetch_objects`); none is needed when all are here.
    """
    repo.require_worktree("git theta pull")
    require_filter(repo)
    git = open_pygit2(repo)
    refs = index_manifests(repo, git)
    head = None if git.head_is_unborn else str(git.head.target)
    result = PullResult(_download(repo, remote, [ref.manifest for ref in refs], head))
    for ref in refs:
        if _write_if_manifest(repo, git, ref):
            result.written.append(ref.path)
    if result.written:
        # The index still has the manifest's size for these paths, and git takes a
        # size change for a modification without reading the file. Naming the paths
        # re-cleans them (to the same blobs) and records their new stat data.
        paths = "".join(f"{path}\0" for path in result.written).encode("utf-8", "surrogateescape")
        repo.git("update-index", "-q", "--refresh", "-z", "--stdin", input=paths)
    return result


def _write_if_manifest(repo: GitRepo, git: pygit2.Repository, ref: ManifestRef) -> bool:
    """Replace the work-tree file with the model file, if it holds exactly the manifest.

    Anything else there (the model itself, local changes, nothing) is left alone.
    """
    assert repo.worktree is not None
    target = repo.worktree / ref.path
    # The manifest was read from this blob; pygit2's stubs type any object looked up as Object.
    content = git[pygit2.Oid(hex=ref.blob_id)].data  # type: ignore[attr-defined]
    try:
        info = target.lstat()
    except FileNotFoundError:
        return False
    if (
        not stat.S_ISREG(info.st_mode)
        or info.st_size != len(content)
        or target.read_bytes() != content
    ):
        return False
    plan = prepare_smudge(content, repo.store(), ref.path)
    write_atomically(plan, target, retry="git theta pull", mode=stat.S_IMODE(info.st_mode))
    return True
