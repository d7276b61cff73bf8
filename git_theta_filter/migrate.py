"""``git theta migrate info|import|export``: move a history's model files into theta and back.

Modelled on ``git lfs migrate``:

* **info** counts, per pattern, the versions in history stored raw, as
  git-lfs pointers and as theta manifests, with their bytes, and (by
  cleaning the others into a scratch store) what theta would store after
  deduplication;
* **import** makes every matching raw blob or git-lfs pointer a theta
  manifest: each distinct version is streamed through the clean core into the
  store (git-lfs objects are read from ``.git/lfs/objects`` and checked
  against their pointers), then :mod:`.history_rewrite` replays the commits
  with the manifests and a ``.gitattributes`` that tracks the patterns;
* **export** goes back: each manifest becomes the original file again, as a
  plain blob (``--to=raw``) or a git-lfs object and pointer (``--to=lfs``).

Everything is checked before the first commit is rewritten: a dirty work
tree, a missing git-lfs object or a missing theta object stops the command
with nothing changed. Each version is streamed (one chunk in memory, at most
one file in a temporary file for ``export --to=raw``), so the cost is bounded
by the largest file, not by the history.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

import pygit2

from .attributes import (
    LFS_ATTRIBUTES,
    THETA_ATTRIBUTES,
    filter_lines,
    paths_matching,
    remove_filter_line,
    set_filter_line,
    worktree_attributes_text,
)
from .blob_stream import BlobStreamer
from .errors import ThetaError
from .gitrepo import GitRepo, git_stream
from .history import open_pygit2, read_manifest_blob
from .history_rewrite import rewrite_history
from .lfs_pointer import MAX_POINTER_BYTES, LfsPointer, parse_lfs_pointer
from .locks import writer_lock
from .manifest import Manifest
from .raw_versions import ConversionCache, clean_blob
from .smudge import SmudgePlan, prepare_smudge
from .store.local import LocalStore

__all__ = [
    "RAW",
    "LFS",
    "THETA",
    "DirtyWorkTreeError",
    "FilterNotConfiguredError",
    "LfsObjectsMissingError",
    "ThetaObjectsMissingError",
    "NoRefsError",
    "NotARefError",
    "Version",
    "HistoryScan",
    "PatternSummary",
    "resolve_refs",
    "scan_history",
    "summarize",
    "migrate_import",
    "migrate_export",
    "MigrateResult",
]

RAW, LFS, THETA = "raw", "lfs", "theta"
Progress = Callable[[str], None]


class DirtyWorkTreeError(ThetaError):
    def __init__(self, changed: list[str]) -> None:
        super().__init__(
            f"the work tree has uncommitted changes ({', '.join(changed[:3])}"
            f"{' ...' if len(changed) > 3 else ''}); rewriting history would check out over them",
            hint="commit or stash them (`git stash`), then run the migration again",
        )
        self.changed = changed


class FilterNotConfiguredError(ThetaError):
    def __init__(self, driver: str, fix: str) -> None:
        super().__init__(
            f"the {driver} filter is not configured here, and the rewritten history "
            f"is checked out through it",
            hint=f"run `{fix}`",
        )
        self.driver = driver


class LfsObjectsMissingError(ThetaError):
    def __init__(self, missing: list[tuple[str, LfsPointer]]) -> None:
        examples = ", ".join(f"{path} (sha256:{p.oid[:12]}…)" for path, p in missing[:3])
        super().__init__(
            f"{len(missing)} git-lfs object(s) of versions to import are not in "
            f".git/lfs/objects: {examples}; nothing was rewritten",
            hint="run `git lfs fetch --all` to download every version's object, then run the "
            "migration again",
        )
        self.missing = missing


class ThetaObjectsMissingError(ThetaError):
    def __init__(self, missing: list[tuple[str, str]]) -> None:
        examples = ", ".join(f"{path} ({oid[:12]}…)" for path, oid in missing[:3])
        super().__init__(
            f"{len(missing)} tensor object(s) of versions to export are not in the local "
            f"store: {examples}; nothing was rewritten",
            hint="run `git theta fetch --all` to download them, then run the migration again",
        )
        self.missing = missing


class NotARefError(ThetaError):
    exit_code = 128

    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name!r} is not a branch or tag; only refs can be rewritten",
            hint="name branches or tags (`git branch`, `git tag`), or use --everything",
        )
        self.name = name


class NoRefsError(ThetaError):
    exit_code = 128

    def __init__(self) -> None:
        super().__init__(
            "HEAD is not on a branch, so there is no current branch to migrate",
            hint="name the branches (`git theta migrate import main`) or use --everything",
        )


@dataclass
class Version:
    """One distinct blob at a matching path: what it is and how big the file is."""

    blob_id: str
    path: str  # one of the paths it is at, for messages
    kind: str  # RAW, LFS or THETA
    size: int | None  # the model file's bytes (a pointer's or manifest's ``size``)
    pointer: LfsPointer | None = None
    manifest: Manifest | None = None


@dataclass
class HistoryScan:
    """The matching paths of the history of some refs, and their distinct versions."""

    commits: int = 0
    paths: set[str] = field(default_factory=set)
    versions: dict[str, Version] = field(default_factory=dict)  # by blob id
    paths_by_blob: dict[str, set[str]] = field(default_factory=dict)


def resolve_refs(repo: GitRepo, refs: list[str], everything: bool) -> list[str]:
    """Full ref names: the given ones, every local branch and tag, or the current branch."""
    if everything:
        listed = repo.git("for-each-ref", "--format=%(refname)", "refs/heads", "refs/tags")
        return listed.split()
    if refs:
        git = open_pygit2(repo)
        names = []
        for ref in refs:
            try:
                names.append(git.lookup_reference_dwim(ref).name)
            except (KeyError, pygit2.InvalidSpecError):
                raise NotARefError(ref) from None
        return names
    head = repo.git("symbolic-ref", "-q", "HEAD", check=False).strip()
    if not head:
        raise NoRefsError()
    return [head]


def _tree_files(
    git: pygit2.Repository,
    tree: pygit2.Tree,
    seen: set[tuple[pygit2.Oid, str]],
    out: dict[str, set[str]],
) -> None:
    """Every regular file below a root tree, each tree visited once per path it is at.

    A stack, not recursion: git commits paths nested deeper than Python's recursion limit.
    """
    stack = [(tree, "")]
    while stack:
        tree, prefix = stack.pop()
        if (tree.id, prefix) in seen:
            continue
        seen.add((tree.id, prefix))
        for entry in tree:
            if entry.type == pygit2.enums.ObjectType.TREE:
                stack.append((git[entry.id].peel(pygit2.Tree), f"{prefix}{entry.name}/"))
            elif entry.filemode in (
                pygit2.enums.FileMode.BLOB,
                pygit2.enums.FileMode.BLOB_EXECUTABLE,
            ):
                out.setdefault(f"{prefix}{entry.name}", set()).add(str(entry.id))


def scan_history(
    repo: GitRepo, refs: list[str], patterns: list[str], blobs: BlobStreamer
) -> HistoryScan:
    """The versions at paths matching ``patterns`` in the history of ``refs``.

    Each distinct tree (at each place it appears) is visited once.
    """
    git = open_pygit2(repo)
    scan = HistoryScan()
    files: dict[str, set[str]] = {}
    seen: set[tuple[pygit2.Oid, str]] = set()
    walker = git.walk(None, pygit2.enums.SortMode.NONE)
    for ref in refs:
        walker.push(git.revparse_single(ref).peel(pygit2.Commit).id)
    for commit in walker:
        scan.commits += 1
        _tree_files(git, commit.tree, seen, files)
    scan.paths = paths_matching(repo, patterns, sorted(files))
    for path in sorted(scan.paths):
        for blob_id in files[path]:
            scan.paths_by_blob.setdefault(blob_id, set()).add(path)
            if blob_id not in scan.versions:
                scan.versions[blob_id] = _classify(git, blobs, blob_id, path)
    return scan


def _classify(git: pygit2.Repository, blobs: BlobStreamer, blob_id: str, path: str) -> Version:
    oid = pygit2.Oid(hex=blob_id)
    manifest = read_manifest_blob(git, oid)
    if manifest is not None:
        return Version(blob_id, path, THETA, manifest.size, manifest=manifest)
    stream = blobs.open(blob_id, path)  # streamed: a partial clone fetches it on the way
    if stream.size < MAX_POINTER_BYTES:
        data = bytearray(stream.size)
        filled = 0
        while filled < stream.size:
            filled += stream.readinto(memoryview(data)[filled:])
        pointer = parse_lfs_pointer(bytes(data))
        if pointer is not None:
            return Version(blob_id, path, LFS, pointer.size, pointer=pointer)
    return Version(blob_id, path, RAW, stream.size)


@dataclass(eq=False)
class PatternSummary:
    pattern: str
    counts: dict[str, int] = field(default_factory=lambda: {RAW: 0, LFS: 0, THETA: 0})
    sizes: dict[str, int] = field(default_factory=lambda: {RAW: 0, LFS: 0, THETA: 0})
    lfs_missing: int = 0
    theta_bytes: int | None = None  # what theta would store for all versions, after dedup


def summarize(
    repo: GitRepo,
    scan: HistoryScan,
    patterns: list[str],
    blobs: BlobStreamer,
    estimate: bool,
    progress: Progress,
) -> list[PatternSummary]:
    """Per pattern (a version counts for the first pattern that matches one of its paths)."""
    summaries = [PatternSummary(pattern) for pattern in patterns]
    owner: dict[str, PatternSummary] = {}
    for summary in summaries:
        for path in paths_matching(repo, [summary.pattern], sorted(scan.paths)):
            for blob_id in _blobs_at(scan, path):
                owner.setdefault(blob_id, summary)
    lfs = repo.lfs_storage()
    for blob_id, version in scan.versions.items():
        summary = owner[blob_id]
        summary.counts[version.kind] += 1
        summary.sizes[version.kind] += version.size or 0
        if version.pointer is not None and not lfs.has(version.pointer):
            summary.lfs_missing += 1
    if estimate:
        _estimate(repo, scan, owner, blobs, progress)
    return summaries


def _blobs_at(scan: HistoryScan, path: str) -> list[str]:
    return [blob_id for blob_id, paths in scan.paths_by_blob.items() if path in paths]


def _estimate(
    repo: GitRepo,
    scan: HistoryScan,
    owner: dict[str, PatternSummary],
    blobs: BlobStreamer,
    progress: Progress,
) -> None:
    """Clean every version into a scratch store and add up the distinct objects per pattern."""
    store = repo.store()
    lfs = repo.lfs_storage()
    objects: dict[PatternSummary, dict[str, int]] = {}  # oid (or manifest) -> bytes
    with tempfile.TemporaryDirectory(prefix="migrate-info-", dir=repo.common_dir) as scratch:
        scratch_store = LocalStore(Path(scratch))
        for number, (blob_id, version) in enumerate(sorted(scan.versions.items()), 1):
            summary = owner[blob_id]
            if version.pointer is not None and not lfs.has(version.pointer):
                continue
            progress(f"cleaning versions to estimate: {number}/{len(scan.versions)}")
            if version.manifest is not None:
                manifest = version.manifest
                sizes = {oid: store.size(oid) or 0 for oid in manifest.object_ids()}
            else:
                manifest = Manifest.parse(
                    clean_blob(blobs, scratch_store, lfs, blob_id, version.path, _quiet)
                )
                sizes = {oid: scratch_store.size(oid) or 0 for oid in manifest.object_ids()}
            found = objects.setdefault(summary, {})
            found.update(sizes)
            found[f"manifest {blob_id}"] = len(manifest.render())
    for summary in set(owner.values()):
        summary.theta_bytes = sum(objects.get(summary, {}).values())


def _quiet(_message: str) -> None:
    """Warnings of the estimate's scratch clean (opaque files) are left to import."""


def _check_clean_work_tree(repo: GitRepo) -> None:
    if repo.worktree is None:
        return
    status = repo.git("status", "--porcelain", "--untracked-files=no", "-z")
    changed = [record[3:] for record in status.split("\0") if len(record) > 3]
    if changed:
        raise DirtyWorkTreeError(changed)


@dataclass
class MigrateResult:
    refs: list[str]
    converted: int  # distinct versions rewritten
    commit_map: dict[str, str]


def migrate_import(
    repo: GitRepo, patterns: list[str], refs: list[str], progress: Progress
) -> MigrateResult:
    """Rewrite ``refs`` so that every raw or git-lfs version at a matching path is a manifest."""
    _check_clean_work_tree(repo)
    if not repo.config_get("filter.theta.process"):
        raise FilterNotConfiguredError("theta", "git theta install")
    git = open_pygit2(repo)
    store = repo.store()
    lfs = repo.lfs_storage()
    with writer_lock(repo.theta_dir), BlobStreamer(repo.git_dir) as blobs:
        scan = scan_history(repo, refs, patterns, blobs)
        todo = {b: v for b, v in scan.versions.items() if v.kind != THETA}
        missing = [
            (v.path, v.pointer) for v in todo.values() if v.pointer and not lfs.has(v.pointer)
        ]
        if missing:
            raise LfsObjectsMissingError(missing)
        cache = ConversionCache(repo.theta_dir, store)
        blob_map = {}
        for number, (blob_id, version) in enumerate(sorted(todo.items()), 1):
            progress(f"converting versions: {number}/{len(todo)} {version.path}")
            manifest = cache.get(blob_id)
            if manifest is None:
                manifest = clean_blob(blobs, store, lfs, blob_id, version.path)
                cache.put(blob_id, manifest)
            blob_map[blob_id] = str(git.create_blob(manifest))

        def edit(text: str) -> str:
            for pattern in patterns:
                if any(
                    line.pattern == pattern and line.filter == "theta"
                    for line in filter_lines(text)
                ):
                    text = remove_filter_line(text, pattern, "lfs")
                else:
                    text = set_filter_line(text, pattern, THETA_ATTRIBUTES, {"lfs"})
            return text

        progress(f"rewriting {scan.commits} commits of {', '.join(refs)}")
        commit_map = rewrite_history(repo, refs, scan.paths, blob_map, edit)
    return MigrateResult(refs, len(todo), commit_map)


def migrate_export(
    repo: GitRepo, patterns: list[str], refs: list[str], to: str, progress: Progress
) -> MigrateResult:
    """Rewrite ``refs`` so that every manifest at a matching path is the file again:
    a plain blob (``to="raw"``) or a git-lfs pointer with its object (``to="lfs"``).
    """
    _check_clean_work_tree(repo)
    if to == LFS and not repo.config_get("filter.lfs.process"):
        raise FilterNotConfiguredError("git-lfs", "git lfs install")
    git = open_pygit2(repo)
    store = repo.store()
    with BlobStreamer(repo.git_dir) as blobs:
        scan = scan_history(repo, refs, patterns, blobs)
    todo = {b: v for b, v in scan.versions.items() if v.manifest is not None}
    missing = [
        (v.path, oid)
        for v in todo.values()
        for oid in sorted(v.manifest.object_ids())  # type: ignore[union-attr]
        if not store.has(oid)
    ]
    if missing:
        raise ThetaObjectsMissingError(missing)
    lfs = repo.lfs_storage()
    blob_map = {}
    with _BlobWriter(repo) as writer:
        for number, (blob_id, version) in enumerate(sorted(todo.items()), 1):
            progress(f"restoring versions: {number}/{len(todo)} {version.path}")
            assert version.manifest is not None
            plan = prepare_smudge(version.manifest.render(), store, version.path)
            if to == LFS:
                pointer = LfsPointer(version.manifest.sha256, version.manifest.size)
                lfs.store(pointer, partial(_smudge_into, plan))
                blob_map[blob_id] = str(git.create_blob(pointer.render()))
            else:
                blob_map[blob_id] = writer.write(plan.write)

    def edit(text: str) -> str:
        for pattern in patterns:
            if to == LFS and not any(
                line.pattern == pattern and line.filter == "lfs" for line in filter_lines(text)
            ):
                text = set_filter_line(text, pattern, LFS_ATTRIBUTES, {"theta"})
            else:
                text = remove_filter_line(text, pattern, "theta")
        return text

    progress(f"rewriting {scan.commits} commits of {', '.join(refs)}")
    commit_map = rewrite_history(repo, refs, scan.paths, blob_map, edit)
    return MigrateResult(refs, len(todo), commit_map)


def _smudge_into(plan: SmudgePlan, file: BinaryIO) -> None:
    plan.write(file.write)


class _BlobWriter:
    """Plain blobs written by ``git hash-object -w``, from one temporary file at a time.

    git streams a file above ``core.bigFileThreshold`` straight into a pack,
    so no file is held in memory whole.
    """

    def __init__(self, repo: GitRepo) -> None:
        self._scratch = Path(tempfile.mkdtemp(prefix="migrate-export-", dir=repo.common_dir))
        self._process = git_stream(
            [f"--git-dir={repo.git_dir}", "hash-object", "-w", "--no-filters", "--stdin-paths"]
        )

    def write(self, produce: Callable[[Callable[[memoryview], object]], None]) -> str:
        assert self._process.stdin is not None and self._process.stdout is not None
        path = self._scratch / "version"
        with open(path, "wb") as file:
            produce(file.write)
        self._process.stdin.write(f"{path}\n".encode())
        self._process.stdin.flush()
        blob_id = self._process.stdout.readline().decode().strip()
        path.unlink()
        if not blob_id:
            raise ThetaError("`git hash-object` failed to write a blob")
        return blob_id

    def __enter__(self) -> _BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait()
        shutil.rmtree(self._scratch, ignore_errors=True)


def default_patterns(repo: GitRepo, filters: Iterable[str]) -> list[str]:
    """The patterns the work tree's .gitattributes routes through ``filters``."""
    if repo.worktree is None:
        return []
    text = worktree_attributes_text(repo.worktree) or ""
    wanted = set(filters)
    return list(dict.fromkeys(line.pattern for line in filter_lines(text) if line.filter in wanted))


def stderr_progress(message: str) -> None:
    print(f"git-theta: {message}", file=sys.stderr, flush=True)
