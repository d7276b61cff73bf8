"""The filter's core: clean and smudge against one repository's store.

Git's filter process (``cli/filter_process.py``), the Python API, the merge
driver and ``git theta pull`` all come through here, so a model file is
cleaned and rebuilt the same way whoever asks:

* :class:`ThetaFilter` is the handler :func:`filter_protocol.serve` calls; a
  file's clean is answered from :mod:`clean_cache` when the same bytes were
  cleaned lately (git cleans again in ``git commit`` after a racy add): a
  small file is read ahead and looked up, a large one only when its work-tree
  copy is unchanged since its last clean;
* :func:`staged_manifest` reads the staged version of a file, whose objects
  clean compares with instead of hashing and writing them again;
* :func:`smudge_or_fetch` prepares a smudge, and when the local store lacks an
  object, fetches what the manifest needs from the remote's store and retries.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
from typing import TYPE_CHECKING

from .clean_cache import CACHED_UP_TO, CleanCache, Prefixed, read_up_to
from .gitrepo import GitRepo, git_process
from .manifest import Manifest, ManifestError, looks_like_manifest
from .store.codec import preload_numpy
from .store.local import LocalStore, ObjectMissingError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .formats.source import Readable

    # The remotes and transfers load only when a smudge lacks an object.
    from .on_demand import OnDemandFetcher
    from .smudge import SmudgePlan

__all__ = ["ThetaFilter", "staged_manifest", "smudge_or_fetch"]

# Asking git for the staged version costs a process (a few ms); below this
# size hashing and writing the file costs less than that.
LOOK_UP_STAGED_FROM = 8 << 20


class ThetaFilter:
    """Clean and smudge against one repository's store (a :class:`filter_protocol.FilterHandler`).

    ``skip_smudge`` checks manifests out as they are (``GIT_THETA_SKIP_SMUDGE=1``);
    ``fetcher``, when given, fetches the objects a smudge lacks. ``before_work`` is
    called once, before the first clean the cache does not answer or the first smudge
    (the filter process checks its hooks there: a cached clean is the second of an
    add + commit, whose first already did).
    """

    def __init__(
        self,
        repo: GitRepo,
        skip_smudge: bool = False,
        fetcher: OnDemandFetcher | None = None,
        before_work: Callable[[], object] | None = None,
    ) -> None:
        self.repo = repo
        self.store = repo.store()
        self.skip_smudge = skip_smudge
        self.fetcher = fetcher
        self.cleaned = CleanCache(repo.theta_dir)
        self._before_work = before_work

    def _start_work(self) -> None:
        # Asked again until it succeeds: while it fails, each request that works fails.
        if self._before_work is not None:
            self._before_work()
            self._before_work = None

    @contextlib.contextmanager
    def _work_beside(self, read_settings: bool = True) -> Iterator[None]:
        """Run ``before_work`` on a thread of its own for the block, beside a large clean
        or a smudge (the filter's hooks check runs two git processes, 25 ms), and raise
        its error after the block, as :meth:`_start_work` would have before it; an error
        of the block is the one raised. With ``read_settings``, the store's settings
        (another git process, read when the first object is written: for a fine-tune,
        at the end) are read there too."""
        work = self._before_work
        store = self.store
        failed: list[BaseException] = []

        def run() -> None:
            if read_settings:
                with contextlib.suppress(Exception):  # the clean reads them again, and raises
                    _ = store.settings
            if work is None:
                return
            try:
                work()
            except BaseException as exc:  # raised on the request's thread
                failed.append(exc)

        thread = threading.Thread(target=run, name="theta-before-work", daemon=True)
        thread.start()
        try:
            yield
        finally:
            thread.join()  # waited for even when the block failed
            if work is not None and not failed:
                self._before_work = None
        if failed:
            raise failed[0]

    def clean(self, pathname: str, content: Readable) -> bytes:
        """The manifest of ``content``; a file of up to :data:`CACHED_UP_TO` bytes is
        read whole first and looked up in the clean cache (docs/store.md)."""
        worktree = _worktree_stat(self.repo, pathname)
        if worktree is not None and worktree.st_size > CACHED_UP_TO:
            # Larger than any file the cache holds: not read ahead (16 MiB read, and
            # copied twice, before any of it was hashed). The work-tree copy only
            # hints: git sends the content, and content that is small after all is
            # cleaned the same, only not remembered.
            return self._clean_large(pathname, content, worktree)
        head = read_up_to(content, CACHED_UP_TO + 1)
        if len(head) > CACHED_UP_TO:
            return self._clean_large(pathname, Prefixed(head, content), worktree)
        cached = self.cleaned.lookup(head, self.store)
        if cached is not None:
            return cached
        manifest = self._clean(pathname, io.BytesIO(head))
        self.cleaned.remember(head, manifest)
        return manifest

    def _clean_large(
        self, pathname: str, content: Readable, worktree: os.stat_result | None
    ) -> bytes:
        """``worktree``: the stat data of the work-tree copy before the clean, if any."""
        # Its tensors' byte planes will need numpy, whose import runs meanwhile (the
        # hooks, the staged manifest, the file's head).
        preload_numpy()
        if self.cleaned.expects_again(pathname, worktree):
            return self._clean_again(pathname, content)
        return self._clean_and_remember(pathname, content)

    def _clean_and_remember(self, pathname: str, content: Readable) -> bytes:
        read = _HeadKept(content)
        manifest = self._clean(pathname, read, large=True)
        if not looks_like_manifest(read.head):  # a manifest passed through is not kept
            # The stat data after the clean: what the next clean of the path finds.
            after = _worktree_stat(self.repo, pathname)
            self.cleaned.remember_large(pathname, manifest, after)
        return manifest

    def _clean_again(self, pathname: str, content: Readable) -> bytes:
        """The clean of a large file whose work tree copy is as it was after its last
        clean: git cleans such a file again while the index is no newer than it (in
        ``git commit`` after a ``git add`` that ended in the second the file was
        written), and git may send other bytes under its path. The bytes are hashed
        and kept in an unnamed temp file; when the clean cache holds their manifest,
        that is the answer, else they are cleaned from the temp file (docs/store.md,
        "Clean cache" rule 4). A disk too full for the copy fails only a miss: the
        copy stops, the hashing goes on."""
        from .formats.source import Source
        from .store import fileio

        self.store.tmp_dir.mkdir(parents=True, exist_ok=True)
        with (
            self.store.writes(pathname),
            tempfile.TemporaryFile(dir=self.store.tmp_dir, buffering=0) as kept,
        ):
            refused: list[OSError] = []

            def keep(data: memoryview) -> None:
                if not refused:
                    try:
                        fileio.write_all(kept, data)
                    except OSError as exc:
                        refused.append(exc)

            source = Source(content)
            source.copy_rest(keep)
            size, digest = source.finish()
            # The filter holds the writer lock: gc keeps the objects a hit names
            # until git has recorded the manifest.
            cached = self.cleaned.lookup_large(digest, size, self.store)
            if cached is not None:
                return cached
            if refused:
                raise refused[0]  # named by writes(): the bytes are gone, the disk full
            kept.seek(0)
            return self._clean_and_remember(pathname, kept)

    def _clean(self, pathname: str, content: Readable, large: bool = False) -> bytes:
        if not large:
            self._start_work()
        with self._work_beside() if large else contextlib.nullcontext():
            # Imported here: a clean the cache answers needs no format parser.
            from .clean import clean, collector_paused, expecting_previous

            # A new version of a model mostly repeats the staged one's tensors;
            # comparing with those costs far less than hashing and writing them.
            with (
                collector_paused(),
                expecting_previous(self.store, staged_manifest(self.repo, pathname)),
            ):
                return clean(content, self.store, pathname)

    def prepare_smudge(
        self, pathname: str, content: Readable, treeish: str | None = None
    ) -> SmudgePlan:
        """``treeish`` is the commit git checks out, when it says (git 2.27+): the remotes
        that have it are asked first for missing objects. The hooks check (before_work)
        runs beside the manifest's parse and checks, which do not need it."""
        with self._work_beside(read_settings=False):
            # Imported here: `git add` and `git commit` (clean only) never load the smudge side.
            from .smudge import SmudgePlan, read_smudge_input

            data = read_smudge_input(content, pathname)
            if self.skip_smudge:
                return SmudgePlan(pathname, self.store, None, passthrough=data)
            if self.fetcher is not None:
                self.fetcher.reading(treeish)
            return smudge_or_fetch(data, self.store, pathname, self.fetcher, repo=self.repo)


class _HeadKept:
    """A :class:`Readable` that keeps the first bytes read through it."""

    def __init__(self, raw: Readable) -> None:
        self._raw = raw
        self.head = b""

    def readinto(self, buffer: memoryview | bytearray) -> int:
        count = self._raw.readinto(buffer)
        if len(self.head) < _HEAD:
            self.head += bytes(buffer[: min(count, _HEAD - len(self.head))])
        return count


# Enough for looks_like_manifest(): the manifest's magic line.
_HEAD = 32


def _worktree_stat(repo: GitRepo, path: str) -> os.stat_result | None:
    """The stat data of the work tree's copy of ``path``; None if there is none to tell."""
    if repo.worktree is None:
        return None
    try:
        return os.stat(repo.worktree / path)
    except (OSError, ValueError):
        return None


def staged_manifest(repo: GitRepo, path: str) -> Manifest | None:
    """The manifest of the index's version of ``path``; None if it has none.

    ``path`` is relative to the top of the work tree, as git names it. The
    work-tree file tells the size to expect: a small file is not worth a look-up.
    """
    if repo.worktree is None:
        return None
    try:
        if os.path.getsize(repo.worktree / path) < LOOK_UP_STAGED_FROM:
            return None
    except OSError:
        return None
    staged = git_process(["cat-file", "blob", f":{path}"], cwd=repo.worktree)
    if staged.returncode != 0 or not looks_like_manifest(staged.stdout):
        return None
    try:
        return Manifest.parse(staged.stdout)
    except ManifestError:
        return None


def smudge_or_fetch(
    content: bytes,
    store: LocalStore,
    path: str,
    fetcher: OnDemandFetcher | None,
    repo: GitRepo | None = None,
) -> SmudgePlan:
    """:func:`smudge.prepare_smudge`, fetching what the local store lacks first if need be.

    Every object the file lacks comes down in one batch per remote store
    (:mod:`on_demand`). Without a ``fetcher`` the error is the one the local
    store gave; with one, an object no store has raises the fetcher's account
    of where it looked (:meth:`OnDemandFetcher.unavailable`). With ``repo``, a
    git-lfs pointer (a version from before the file was tracked) is the file in
    ``repo``'s git-lfs storage; where that storage is costs a ``git config``,
    asked only for a pointer, and theta's stores are not asked for it.
    """
    from .lfs_pointer import looks_like_lfs_pointer
    from .smudge import prepare_smudge

    lfs = repo.lfs_storage() if repo is not None and looks_like_lfs_pointer(content) else None
    try:
        return prepare_smudge(content, store, path, lfs)
    except ObjectMissingError:
        if fetcher is None or lfs is not None:
            raise
    fetcher.fetch_missing(content)
    try:
        return prepare_smudge(content, store, path)
    except ObjectMissingError as exc:
        raise fetcher.unavailable(exc) from None
