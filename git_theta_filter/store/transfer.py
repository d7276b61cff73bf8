"""Moving objects between the local store and a remote store, several at a time.

* **Skip.** An upload first asks the store which objects it already has and
  sends only the others; a download skips what the local store has.
* **Verify.** Every download lands in ``theta/tmp`` through an
  :class:`~.sink.ObjectSink`, which hashes it and cuts it off as soon as it
  passes the size the manifest gives the object, whatever the store sends;
  it is linked into the local store only when its sha256 is its id. A
  corrupt or oversized object is refused and reported, its temp file
  deleted; an interrupted download leaves no object behind, only a temp file
  that the next download removes.
* **Parallel.** ``workers`` threads (``theta.transfers``, default 8). A store
  that turns out to be unreachable stops the whole transfer at once.
* **Progress** goes to stderr through the ``progress`` class the caller passes
  (``progress.Progress``: redrawn in place on a terminal, one summary line
  otherwise; ``progress.QuietProgress``: nothing).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import ThetaError
from ..locks import writer_lock
from ..progress import Progress
from ..units import human_bytes
from .base import ObjectStore, StoreError, StoreUnavailableError
from .local import LocalStore
from .sink import ObjectSink

__all__ = [
    "DownloadVerificationError",
    "TransferFailedError",
    "TransferResult",
    "upload",
    "download",
    "relay",
    "DOWNLOAD_PREFIX",
]

# Temp files of downloads in theta/tmp are "download-<pid>-*"; the pid tells
# whether the process that made one is still running.
DOWNLOAD_PREFIX = "download-"


class DownloadVerificationError(StoreError):
    """A downloaded object whose bytes do not hash to its id."""

    def __init__(self, url: str, oid: str, got: str, hint: str) -> None:
        super().__init__(
            url, f"is corrupt: its content hashes to {got}; refused", oid=oid, hint=hint
        )
        self.got = got


class TransferFailedError(ThetaError):
    """Some objects could not be moved; ``failures`` maps each oid to its error."""

    def __init__(self, verb: str, url: str, failures: Mapping[str, ThetaError], total: int) -> None:
        first = failures[min(failures)]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        super().__init__(
            f"could not {verb} {len(failures)} of {total} tensor objects: {first}{more}",
            hint=first.hint,
        )
        self.url = url
        self.failures = dict(failures)


@dataclass
class TransferResult:
    """What a transfer did: objects moved (and their bytes), objects the other side had, and,
    of those moved, how many were copied between two remote stores (:func:`relay`)."""

    transferred: int = 0
    transferred_bytes: int = 0
    skipped: int = 0
    copied: int = 0


def _run_parallel(
    oids: list[str],
    work: Callable[[str], int | None],
    workers: int,
    progress: Progress,
    size_hint: Callable[[str], int],
) -> tuple[TransferResult, dict[str, ThetaError]]:
    """``work(oid)`` for each oid: bytes moved, or None when the other side had it.

    The progress line is ended whatever happens.
    """
    result = TransferResult()
    failures: dict[str, ThetaError] = {}
    fatal: list[StoreUnavailableError] = []
    stop = threading.Event()
    lock = threading.Lock()

    def task(oid: str) -> None:
        if stop.is_set():
            return
        try:
            moved = work(oid)
        except StoreUnavailableError as exc:
            stop.set()
            fatal.append(exc)
            return
        except ThetaError as exc:
            failures[oid] = exc
            return
        except BaseException:
            stop.set()  # a bug or an interrupt: start nothing new
            raise
        with lock:
            if moved is None:
                result.skipped += 1
            else:
                result.transferred += 1
                result.transferred_bytes += moved
        progress.advance(size_hint(oid))

    pool = ThreadPoolExecutor(
        max_workers=max(1, min(workers, len(oids))), thread_name_prefix="theta-transfer"
    )
    try:
        for future in [pool.submit(task, oid) for oid in oids]:
            future.result()
    except BaseException:
        progress.finish(None)
        raise
    finally:
        # On Ctrl-C too: nothing new starts, and running tasks clean up their temp files.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
    if fatal:
        progress.finish(None)
        raise fatal[0]
    return result, failures


def upload(
    local: LocalStore,
    remote: ObjectStore,
    oids: Iterable[str],
    *,
    workers: int,
    progress: type[Progress] = Progress,
    list_remote: bool = False,
) -> TransferResult:
    """Send the objects ``remote`` lacks. ``list_remote`` learns what it has from one listing
    instead of asking object by object, which is cheaper when sending a whole history."""
    wanted = sorted(set(oids))
    if not wanted:
        return TransferResult()
    # Remote stores hold canonical bytes (docs/store.md): their sizes, not the encoded ones.
    all_sizes = {oid: local.canonical_size(oid) or 0 for oid in wanted}
    remote.prepare("upload", {oid: (size,) for oid, size in all_sizes.items()})
    if list_remote and remote.supports_listing:
        present = set(remote.list())
    else:
        present = remote.batch_has(wanted)
    todo = [oid for oid in wanted if oid not in present]
    sizes = {oid: all_sizes[oid] for oid in todo}

    def send(oid: str) -> int | None:
        # Remote stores hold canonical bytes (docs/store.md), whatever the local encoding.
        with local.canonical_file(oid) as canonical:
            return sizes[oid] if remote.put(oid, canonical) else None

    bar = progress("Uploading tensors", len(todo), sum(sizes.values()))
    workers = remote.preferred_workers or workers
    result, failures = _run_parallel(todo, send, workers, bar, sizes.__getitem__)
    result.skipped += len(wanted) - len(todo)
    bar.finish(_summary("uploaded", "to", remote.url, result) if result.transferred else None)
    if failures:
        raise TransferFailedError("upload", remote.url, failures, len(todo))
    return result


def download(
    local: LocalStore,
    remote: ObjectStore,
    payloads: Mapping[str, int],
    *,
    workers: int,
    progress: type[Progress] = Progress,
    object_sizes: Mapping[str, Sequence[int]] | None = None,
) -> TransferResult:
    """Fetch the objects the local store lacks, verifying each. ``payloads`` maps each oid to
    the payload length its manifest records (``Manifest.payload_lengths``): no download may
    pass the object size that implies. ``object_sizes`` gives the sizes each object file may
    have (``object_sizes.py``), which a Git LFS store must send."""
    hints = dict(payloads)
    todo = [oid for oid in sorted(hints) if not local.has(oid)]
    if not todo:
        return TransferResult(skipped=len(hints))
    if object_sizes is not None:
        remote.prepare("download", {oid: object_sizes.get(oid, ()) for oid in todo})
    workers = remote.preferred_workers or workers

    def fetch(oid: str) -> int:
        return _download_one(local, remote, oid, hints[oid])

    bar = progress("Downloading tensors", len(todo), sum(hints[oid] for oid in todo))
    # As a writer of objects, hold off `git theta gc`: it deletes temp files and
    # unreferenced objects, and a fetch may land objects before refs name them.
    with writer_lock(local.theta_dir):
        _remove_stale_downloads(local.tmp_dir)
        result, failures = _run_parallel(todo, fetch, workers, bar, hints.__getitem__)
    result.skipped += len(hints) - len(todo)
    bar.finish(_summary("downloaded", "from", remote.url, result) if result.transferred else None)
    if failures:
        raise TransferFailedError("download", remote.url, failures, len(todo))
    return result


def _summary(verb: str, preposition: str, url: str, result: TransferResult) -> str:
    line = (
        f"{verb} {result.transferred} tensor object{'s' * (result.transferred != 1)} "
        f"({human_bytes(result.transferred_bytes)}) {preposition} {url}"
    )
    if result.skipped:
        line += f"; {result.skipped} already there"
    return line


def _fetch_verified(local: LocalStore, remote: ObjectStore, oid: str, payload: int) -> Path:
    """``oid`` from ``remote`` in a temp file of ``theta/tmp``, its sha256 checked and its
    size at most what a ``payload`` of that many bytes allows; the caller removes the file.

    This is the one place downloads are written: whatever the store, its bytes go
    through an :class:`ObjectSink`, and any failure deletes the temp file.
    """
    local.tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=local.tmp_dir, prefix=f"{DOWNLOAD_PREFIX}{os.getpid()}-", suffix=".tmp"
    )
    temp = Path(name)
    try:
        with open(fd, "wb", buffering=0) as file:
            sink = ObjectSink.for_object(file, remote.url, oid, payload)
            remote.get(oid, sink)
        got = sink.hexdigest()
        if got != oid:
            raise DownloadVerificationError(remote.url, oid, got, remote.corrupt_hint)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _download_one(local: LocalStore, remote: ObjectStore, oid: str, payload: int) -> int:
    temp: Path | None = None
    try:
        # The stores name their own failures; what is left is our disk refusing the copy.
        with local.writes():
            temp = _fetch_verified(local, remote, oid, payload)
            size = temp.stat().st_size
            local.import_verified(temp, oid)
            return size
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)


def relay(
    local: LocalStore,
    source: ObjectStore,
    target: ObjectStore,
    payloads: Mapping[str, int],
    *,
    workers: int,
    progress: type[Progress] = Progress,
    object_sizes: Mapping[str, Sequence[int]] | None = None,
) -> TransferResult:
    """Copy objects from ``source`` to ``target`` without adding them to the local store.

    Each one passes through a temp file in ``theta/tmp`` and is verified and
    cut at its size on the way, as a download is. ``payloads`` and
    ``object_sizes`` are as for :func:`download`. A clone that checked out only
    some versions can so fill a new store with all of them.
    """
    todo = sorted(payloads)
    if not todo:
        return TransferResult()
    if object_sizes is not None:
        source.prepare("download", {oid: object_sizes.get(oid, ()) for oid in todo})

    def copy(oid: str) -> int | None:
        temp = _fetch_verified(local, source, oid, payloads[oid])
        try:
            size = temp.stat().st_size
            target.prepare("upload", {oid: (size,)})
            return size if target.put(oid, temp) else None
        finally:
            temp.unlink(missing_ok=True)

    bar = progress("Copying tensors", len(todo), sum(payloads[oid] for oid in todo))
    with writer_lock(local.theta_dir):  # gc removes temp files of theta/tmp
        result, failures = _run_parallel(
            todo, copy, target.preferred_workers or workers, bar, payloads.__getitem__
        )
    result.copied = result.transferred
    line = _summary("copied", f"from {source.url} to", target.url, result)
    bar.finish(line if result.transferred else None)
    if failures:
        raise TransferFailedError("copy", target.url, failures, len(todo))
    return result


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_downloads(tmp_dir: Path) -> None:
    """Delete the temp files of downloads whose process is gone (killed mid-transfer)."""
    try:
        names = os.listdir(tmp_dir)
    except FileNotFoundError:
        return
    for name in names:
        pid = name[len(DOWNLOAD_PREFIX) :].partition("-")[0]
        if name.startswith(DOWNLOAD_PREFIX) and pid.isdigit() and not _process_alive(int(pid)):
            (tmp_dir / name).unlink(missing_ok=True)
