"""``git theta gc``: delete local objects that no manifest needs.

An object is kept when any manifest still reachable in this repository names
it: from any ref, any reflog entry, the stash, HEAD and the index of every
worktree. Objects newer than the grace period (``--prune=<date>``, default
``2.weeks.ago`` as in ``git gc``) are kept too.

gc holds the exclusive side of ``locks.py``'s lock, so it never runs while an
``add`` is writing objects that the index does not name yet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pygit2

from .errors import ThetaError
from .gitrepo import GitRepo
from .history import ManifestRef, reachable_manifests, read_manifest_blob
from .locks import exclusive_gc_lock
from .store.repack import repack, with_delta_bases

__all__ = ["BadPruneDateError", "GcReport", "parse_prune_date", "collect_garbage"]

DEFAULT_PRUNE = "2.weeks.ago"


class BadPruneDateError(ThetaError):
    exit_code = 128

    def __init__(self, text: str) -> None:
        super().__init__(f"cannot understand --prune={text!r}")


def parse_prune_date(repo: GitRepo, text: str) -> float:
    """A cut-off time in git's expiry-date syntax (``now``, ``never``, ``2.weeks.ago``, ISO dates).

    Parsed by git itself (``git config --type=expiry-date``), which rejects
    malformed dates as ``git gc --prune`` does.
    """
    value = repo.git(
        "-c", f"theta.prune={text}", "config", "--type=expiry-date", "theta.prune", check=False
    ).strip()
    if not value.isdigit():
        raise BadPruneDateError(text)
    return float(value)  # "now" parses as the largest timestamp: everything is older


def _tips(repo: GitRepo, git: pygit2.Repository) -> set[pygit2.Oid]:
    """Every commit a ref, a reflog entry, or a worktree's HEAD or HEAD reflog points to."""
    tips: set[pygit2.Oid] = set()

    def add(oid: pygit2.Oid | None) -> None:
        if oid is not None and oid != pygit2.Oid(hex="0" * 40):
            try:
                tips.add(git[oid].peel(pygit2.Commit).id)
            except (KeyError, ValueError, pygit2.InvalidSpecError):
                pass

    def add_reference(owner: pygit2.Repository, name: str) -> None:
        try:
            reference = owner.lookup_reference(name)
        except (KeyError, pygit2.InvalidSpecError):
            return
        with contextlib.suppress(KeyError, ValueError, pygit2.GitError):
            add(reference.resolve().target)
        with contextlib.suppress(KeyError, ValueError, pygit2.GitError):
            for entry in reference.log():
                add(entry.oid_new)
                add(entry.oid_old)

    for name in list(git.references) + ["HEAD"]:
        add_reference(git, name)
    # Each linked worktree has a HEAD and a HEAD reflog of its own, as in `git gc`:
    # a commit made there and then checked out away is reachable only from that log.
    for worktree in _worktree_repos(git):
        add_reference(worktree, "HEAD")
    return tips


def _worktree_repos(git: pygit2.Repository) -> list[pygit2.Repository]:
    repos = []
    for name in git.list_worktrees():
        with contextlib.suppress(pygit2.GitError, KeyError):
            repos.append(pygit2.Repository(git.lookup_worktree(name).path))
    return repos


def _index_manifests(git: pygit2.Repository) -> Iterator[ManifestRef]:
    for repo in [git, *_worktree_repos(git)]:
        if repo.is_bare:
            continue
        for entry in repo.index:
            manifest = read_manifest_blob(git, entry.id)
            if manifest is not None:
                yield ManifestRef(entry.path, str(entry.id), manifest)


@dataclass
class GcReport:
    kept: int = 0
    deleted: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    kept_recent: int = 0
    temp_files_removed: int = 0


def collect_garbage(repo: GitRepo, prune_before: float, dry_run: bool) -> GcReport:
    store = repo.store()
    report = GcReport()
    with exclusive_gc_lock(repo.theta_dir):
        # The common dir is the main worktree's repository, wherever gc runs:
        # opened from a linked worktree, its HEAD and index would be left out.
        git = pygit2.Repository(str(repo.common_dir))
        needed: set[str] = set()
        for ref in list(reachable_manifests(git, _tips(repo, git)).values()) + list(
            _index_manifests(git)
        ):
            needed |= ref.manifest.object_ids()
        recent: set[str] = set()
        loose = list(store.iter_loose_oids())
        for oid in loose:
            if oid not in needed and store.object_path(oid).lstat().st_mtime >= prune_before:
                recent.add(oid)
        for pack, index in store.packs().items():
            if pack.stat().st_mtime >= prune_before:  # a dedup hit freshens its pack
                recent |= {oid for oid, _, _ in index.entries() if oid not in needed}
        present = set(loose) | store.packed_oids()
        report.kept = len(needed & present)
        report.kept_recent = len(recent)
        # A kept delta needs its base, however old or unreferenced the base is.
        keep = with_delta_bases(store, (needed | recent) & present)
        for oid in loose:
            if oid not in keep:
                path = store.object_path(oid)
                report.deleted.append(oid)
                report.freed_bytes += path.lstat().st_size
                if not dry_run:
                    path.unlink()
        repacked = repack(store, keep.__contains__, dry_run=dry_run)
        report.deleted += repacked.dropped
        report.freed_bytes += repacked.dropped_bytes
        # With the exclusive lock held no writer is running: every temp file is debris
        # of a killed process.
        if store.tmp_dir.is_dir():
            for leftover in store.tmp_dir.iterdir():
                report.temp_files_removed += 1
                if not dry_run:
                    leftover.unlink(missing_ok=True)
    return report
