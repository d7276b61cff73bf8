"""``git theta gc``: delete local objects that no manifest needs.

An object is kept when a manifest that ``git gc`` would keep names it: git
itself lists what it keeps (``--no-replace-objects rev-list --objects --all
--reflog --indexed-objects``: every ref, including refs to trees and blobs and tags of
them, the stash and notes; every reflog; every worktree's HEAD and index, a
locked worktree whose directory is gone included). Every worktree's
per-worktree refs (refs/bisect/*, refs/worktree/*, which git 2.39's gc keeps
for the current worktree only) and the commits MERGE_HEAD, CHERRY_PICK_HEAD,
REVERT_HEAD and the like name are added. A blob that starts like a manifest
but that this version cannot parse (a newer version's) keeps every object id
it holds. Objects newer than the grace period
(``--prune=<date>``, default ``2.weeks.ago`` as in ``git gc``) are kept too;
an add that finds an object already stored freshens its mtime
(``LocalStore.freshen``), as git freshens an object it would have written.

gc holds the exclusive side of ``locks.py``'s lock, so it never runs while an
``add`` is writing objects that the index does not name yet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pygit2

from .errors import ThetaError
from .gitrepo import GitRepo, is_git_object_id
from .locks import exclusive_gc_lock
from .manifest import MAGIC, MAX_MANIFEST_BYTES, Manifest, ManifestError
from .promisor import GitObjectsUnavailableError, fetch_missing
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


# Files git leaves in a git dir while an operation is under way (a merge, a
# cherry-pick, a revert, a rebase, a bisect): they name commits that git's own
# commands still need. git gc keeps only what refs, reflogs and indexes reach;
# keeping these too costs nothing and spares an object a stopped merge needs.
_OPERATION_HEADS = (
    "MERGE_HEAD",
    "CHERRY_PICK_HEAD",
    "REVERT_HEAD",
    "REBASE_HEAD",
    "ORIG_HEAD",
    "BISECT_HEAD",
    "AUTO_MERGE",
    "rebase-merge/onto",
    "rebase-merge/orig-head",
    "rebase-apply/onto",
    "rebase-apply/orig-head",
)
# Refs that each worktree has for itself (git-worktree(1), "Refs"). `rev-list
# --all` lists only the current worktree's: git 2.39's own gc prunes what
# another worktree's refs/bisect/* or refs/worktree/* alone reaches.
_PER_WORKTREE_REFS = ("refs/bisect", "refs/worktree", "refs/rewritten")
# Rounds of fetching what a partial clone left out, before giving up.
_FETCH_ROUNDS = 4
# An object id standing alone (not part of a longer run of hex digits).
_OBJECT_ID = re.compile(rb"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


def _git_dirs(repo: GitRepo) -> list[Path]:
    """The main git dir and every linked worktree's, including a locked worktree
    whose directory is gone (its git dir, with HEAD, index and logs, stays)."""
    worktrees = repo.common_dir / "worktrees"
    linked = sorted(p for p in worktrees.iterdir() if p.is_dir()) if worktrees.is_dir() else []
    return [repo.common_dir, *linked]


def _named_ids(path: Path) -> list[str]:
    """The object ids a file of refs or operation heads names (one per line; a
    symbolic ref names another ref, which is listed on its own)."""
    try:
        text = path.read_text("ascii", "replace")
    except OSError:
        return []
    words = (line.split(maxsplit=1)[0] for line in text.splitlines() if line.strip())
    return [word for word in words if is_git_object_id(word)]


def _roots_beyond_all(repo: GitRepo, git: pygit2.Repository) -> list[str]:
    """What ``rev-list --all`` leaves out: every worktree's operation heads
    (MERGE_HEAD, CHERRY_PICK_HEAD, REVERT_HEAD and the like) and per-worktree refs.

    An id whose object is gone (git gc does not keep operation heads) is left out.
    """
    found = []
    for git_dir in _git_dirs(repo):
        files = [git_dir / name for name in _OPERATION_HEADS]
        for prefix in _PER_WORKTREE_REFS:
            refs = git_dir / prefix
            if refs.is_dir() and not refs.is_symlink():
                files += sorted(path for path in refs.rglob("*") if path.is_file())
        for path in files:
            found += [oid for oid in _named_ids(path) if _exists(git, oid)]
    return list(dict.fromkeys(found))


def _exists(git: pygit2.Repository, hex_id: str) -> bool:
    try:
        return pygit2.Oid(hex=hex_id) in git.odb
    except ValueError:  # an id of the other hash function
        return False


def _objects_git_keeps(repo: GitRepo, git: pygit2.Repository) -> tuple[list[str], list[str]]:
    """(present, missing) ids of every object ``git gc`` keeps reachable, as git lists them.

    ``git --no-replace-objects rev-list --objects --all --reflog --indexed-objects``
    is the walk git's own prune marks with: every ref (refs/stash, refs/notes/*, tags of
    trees and blobs included), every worktree's HEAD, reflogs and index, a
    locked worktree whose directory is gone included. Every worktree's
    per-worktree refs and operation heads are added to it.
    """
    listing = repo.git(
        # Replace refs make a walk read the replacement in an object's place; git's own
        # prune walks without them and keeps the original too (a clone, which fetches
        # no refs/replace/*, checks it out). The replacements are refs, walked as such.
        "--no-replace-objects",
        "rev-list",
        "--objects",
        "--all",
        "--reflog",
        "--indexed-objects",
        "--missing=print",
        revisions=_roots_beyond_all(repo, git),
    )
    present, missing = [], []
    for line in listing.splitlines():
        word = line.split(" ", 1)[0]
        if word.startswith("?"):
            missing.append(word[1:])
        elif word:
            present.append(word)
    return present, missing


def _ids_git_keeps(repo: GitRepo, git: pygit2.Repository) -> set[str]:
    """Every tensor object that a manifest among the objects git gc keeps names.

    In a partial clone, what the walk could not reach (trees and blobs left
    out) is fetched and the walk run again; a repository that lacks a
    reachable object and has no promisor remote makes gc stop
    (``GitObjectsUnavailableError``) rather than delete what it cannot account for.
    """
    for _ in range(_FETCH_ROUNDS):
        present, missing = _objects_git_keeps(repo, git)
        if not missing:
            break
        fetch_missing(git, [pygit2.Oid(hex=oid) for oid in missing])
    else:
        raise GitObjectsUnavailableError(
            missing,
            "history reaches it but it could not be fetched",
            hint="run `git fsck`; gc deleted nothing",
        )
    needed: set[str] = set()
    for oid in dict.fromkeys(present):
        needed |= _ids_named_by(git, oid)
    return needed


def _ids_named_by(git: pygit2.Repository, oid: str) -> set[str]:
    """The tensor objects a git object names: a manifest's, or none.

    A blob that starts like a manifest but does not parse (one of a newer
    version, written by a newer git-theta) is no less kept by git, and whoever
    can read it needs its objects: every object id in it is kept, rather than
    none. An id that names no stored object keeps nothing.
    """
    git_oid = pygit2.Oid(hex=oid)
    try:
        kind, size = git.odb.read_header(git_oid)
    except KeyError:  # left out by a partial clone since the walk: fetched, as history reads it
        fetch_missing(git, [git_oid])
        kind, size = git.odb.read_header(git_oid)
    if kind != pygit2.enums.ObjectType.BLOB or size > MAX_MANIFEST_BYTES or size < len(MAGIC):
        return set()
    # The header says it is a blob; pygit2's stubs type any object looked up as Object.
    data = git[git_oid].data  # type: ignore[attr-defined]
    if not data.startswith(MAGIC):
        return set()
    try:
        return Manifest.parse(data).object_ids()
    except ManifestError:
        return {found.decode("ascii") for found in _OBJECT_ID.findall(data)}


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
        needed = _ids_git_keeps(repo, git)
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
