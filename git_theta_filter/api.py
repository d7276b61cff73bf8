"""The Python API: commit, read and restore model checkpoints from a training loop.

::

    import git_theta_filter as gtf

    repo = gtf.open(".")
    repo.commit_checkpoint(model.state_dict(), "model.pth", message="epoch 3",
                           metrics={"loss": 0.12, "val.acc": 0.97})
    state = repo.load_state_dict("model.pth", rev="HEAD~2")
    for entry in repo.history("model.pth"):
        print(entry.commit, entry.metrics, entry.rel_change)
    best = repo.best("model.pth", metric="val.acc", mode="max")
    repo.restore("model.pth", rev=best.commit)

Everything goes through the same core as the git filter: files are cleaned
into the store and rebuilt from it in this process, never piped through git,
and no pickle is ever run. torch is imported only by the two methods that
need it, :meth:`Repository.commit_checkpoint` (to save) and
:meth:`Repository.load_state_dict`. Paths are relative to the top of the work
tree, or absolute. The full reference is docs/api.md.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pygit2

from .errors import ThetaError
from .filter import smudge_or_fetch
from .gitrepo import GitRepo, NoWorkTreeError
from .history import open_pygit2, read_blob
from .installation import FilterNotInstalledError, require_filter
from .locks import writer_lock
from .manifest import Manifest
from .metrics import CONVENTION_SUFFIX, Metric, declared_metrics_files, resolve_metric
from .on_demand import OnDemandFetcher
from .repo_files import (
    UnsafeRepositoryFileError,
    replaced_whole,
    repository_path_parts,
    symbolic_link_on_the_way,
)
from .revisions import Pathspec, parse_range, resolve_commit
from .smudge import write_atomically
from .staging import NotTrackedError, clean_into_index, write_index_entry
from .store.local import ObjectMissingError
from .terminal import printable

if TYPE_CHECKING:
    import torch

    from .tensor_diff import ManifestDiff
    from .theta_log import LogEntry

__all__ = [
    "open",
    "Repository",
    "HistoryEntry",
    "FilterNotInstalledError",
    "NotTrackedError",
    "ModelNotFoundError",
    "NoWorkTreeError",
    "UnsupportedDTypeError",
    "UnsafeWorkTreePathError",
    "ThetaWarning",
]


class ModelNotFoundError(ThetaError):
    """No model file at that path in that revision."""

    def __init__(self, path: str, rev: str) -> None:
        super().__init__(f"{rev}: no model file {path}")
        self.path = path
        self.rev = rev


class UnsupportedDTypeError(ThetaError):
    """A tensor that cannot be rebuilt from its object alone
    (a quantized tensor needs its scales).
    """

    def __init__(self, path: str, tensor: str, dtype: str) -> None:
        super().__init__(
            f"{path}: tensor {tensor!r} is {dtype}, which cannot be loaded without torch.load"
        )
        self.path = path
        self.tensor = tensor
        self.dtype = dtype


class UnsafeWorkTreePathError(ThetaError):
    """A path to write or commit that leaves the work tree, enters .git, or goes through a
    symbolic link (which a commit may have placed where a folder was expected).
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"{path}: {reason}; not written",
            hint="name a path inside the work tree whose folders are directories "
            "(`git ls-files -s` shows a committed link as mode 120000)",
        )
        self.path = path
        self.reason = reason


class ThetaWarning(UserWarning):
    """Something was skipped, such as an unreadable metrics file."""


@dataclass(frozen=True)
class HistoryEntry:
    """One commit that changed a model file, as ``git theta-log`` shows it.

    ``norm`` is ‖θ‖₂ of that version and ``rel_change`` ‖Δθ‖/‖θ‖ against the
    first parent's version (None for the first version, or when tensor
    objects are missing).
    """

    commit: str
    date: datetime.datetime
    subject: str
    path: str
    metrics: dict[str, Metric]
    norm: float | None
    rel_change: float | None
    tensors_changed: int


# torch's name for each manifest dtype that can be rebuilt from its bytes alone.
_TORCH_DTYPES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "U32": "uint32",
    "I32": "int32",
    "U64": "uint64",
    "I64": "int64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "C32": "complex32",
    "C64": "complex64",
    "C128": "complex128",
}


# git keeps one index per work tree, and a commit takes all that is staged: in this process,
# one thread at a time stages and commits in a git dir (another's file went into its commit).
_INDEX_LOCKS: dict[Path, threading.Lock] = {}
_INDEX_LOCKS_GUARD = threading.Lock()


def _index_lock(git_dir: Path) -> threading.Lock:
    with _INDEX_LOCKS_GUARD:
        return _INDEX_LOCKS.setdefault(git_dir.resolve(), threading.Lock())


def open(path: str | os.PathLike[str] = ".") -> Repository:  # noqa: A001 - the API's entry point, gtf.open
    """The repository that contains ``path``; checks that the theta filter is configured."""
    repo = GitRepo.discover(path)
    require_filter(repo)
    return Repository(repo)


class Repository:
    """A git repository whose model files go through the theta filter. Made by :func:`open`."""

    def __init__(self, repo: GitRepo) -> None:
        self._repo = repo
        self._git = open_pygit2(repo)
        self._store = repo.store()

    @property
    def path(self) -> Path:
        """The top of the work tree (the git dir for a bare repository)."""
        return self._repo.worktree or self._repo.git_dir

    def __repr__(self) -> str:
        return f"<git_theta_filter.Repository {self.path}>"

    # -- paths ------------------------------------------------------------------
    def _relative(self, path: str | os.PathLike[str]) -> str:
        """``path`` as git names it: relative to the top of the work tree, with ``/``."""
        given = Path(path)
        if given.is_absolute():
            # Its folder resolved, not the file: a link there is named, not what it names.
            folder = given.parent.resolve()
            given = (folder / given.name).relative_to(self._repo.require_worktree().resolve())
        return given.as_posix()

    def _worktree_target(self, path: str | os.PathLike[str], link: bool = True) -> str:
        """``path`` as :meth:`_relative` gives it, checked for a write or a commit: inside
        the work tree, outside .git, through no symbolic link (nor one at ``path`` itself,
        unless ``link``, for a caller that replaces the file rather than writing into it).

        A commit can make any folder a link to anywhere; what is written or cleaned
        through it is outside the repository. Raises :class:`UnsafeWorkTreePathError`.
        """
        worktree = self._repo.require_worktree()
        try:
            relative = self._relative(path)
        except ValueError:
            raise UnsafeWorkTreePathError(str(path), "is outside the work tree") from None
        try:
            parts = repository_path_parts(relative)
        except UnsafeRepositoryFileError as exc:
            raise UnsafeWorkTreePathError(relative, exc.reason) from None
        found = symbolic_link_on_the_way(worktree, parts, last=not link)
        if found == relative:
            raise UnsafeWorkTreePathError(relative, "is a symbolic link")
        if found is not None:
            raise UnsafeWorkTreePathError(relative, f"goes through the symbolic link {found}")
        return relative

    def tracked_paths(self, paths: Sequence[str | os.PathLike[str]]) -> set[str]:
        """Those of ``paths`` (as repository-relative paths) that .gitattributes routes
        through the theta filter.

        `git check-attr` reads the work tree's .gitattributes, committed or
        not, as `git add` does.
        """
        relatives = [self._relative(path) for path in paths]
        if not relatives:
            return set()
        fields = self._repo.git("check-attr", "-z", "filter", operands=relatives).split("\0")
        return {
            fields[i]
            for i in range(0, len(fields) - 2, 3)
            if fields[i + 1] == "filter" and fields[i + 2] == "theta"
        }

    def _check_tracked(self, path: str) -> None:
        if path not in self.tracked_paths([path]):
            raise NotTrackedError(path)

    # -- writing ----------------------------------------------------------------
    def track(self, *patterns: str) -> None:
        """Route files matching ``patterns`` through the filter (``git theta track``);
        stage .gitattributes.
        """
        from .installation import track

        with _index_lock(self._repo.git_dir):
            track(self._repo, list(patterns))
            self._repo.git("add", operands=[".gitattributes"])

    def commit_checkpoint(
        self,
        checkpoint: Any,
        path: str | os.PathLike[str],
        message: str,
        metrics: Mapping[str, Any] | None = None,
    ) -> str:
        """Save ``checkpoint`` to ``path`` and commit it; returns the new commit's id.

        The commit is the one ``git add <path> [<path>.metrics.json]`` and
        ``git commit -m <message>`` would make (hooks run, and anything
        already staged goes in too), but the file is cleaned into the store
        here, not piped through git. ``checkpoint`` is anything ``torch.save``
        takes (a ``.safetensors`` path takes a flat dict of tensors and is
        written with safetensors). ``metrics`` (nested dicts of numbers; 0-d
        tensors and numpy scalars are converted) go to
        ``<path>.metrics.json`` in the same commit, where ``git theta-log``
        reads them.
        """
        relative = self._worktree_target(path)
        self._check_tracked(relative)
        _save(checkpoint, self._repo.require_worktree() / relative)
        return self.commit_files([relative], message, metrics)

    def commit_files(
        self,
        paths: Sequence[str | os.PathLike[str]],
        message: str,
        metrics: Mapping[str, Any] | None = None,
        metrics_for: str | os.PathLike[str] | None = None,
    ) -> str:
        """Commit files already in the work tree (a framework's checkpoint folder);
        returns the new commit's id.

        Files the theta filter tracks are cleaned into the store here, in this
        process; the others are added with ``git add`` (a path that no longer
        exists is staged as deleted). Then ``git commit``
        runs, as for :meth:`commit_checkpoint`. ``metrics`` go to
        ``<metrics_for>.metrics.json`` (by default, beside the first tracked
        file) in the same commit. When nothing differs from HEAD, no commit is
        made and HEAD's id is returned.
        """
        with _index_lock(self._repo.git_dir):
            worktree = self._repo.require_worktree()
            relatives = [self._worktree_target(path) for path in paths]
            tracked = self.tracked_paths(relatives)
            # A deleted file is staged as deleted by `git add`, tracked or not.
            models = [p for p in relatives if p in tracked and (worktree / p).exists()]
            for relative in models:
                self._worktree_target(relative, link=False)  # cleaning reads through a link
            others = [path for path in relatives if path not in models]
            if metrics is not None:
                owner = self._worktree_target(metrics_for) if metrics_for is not None else None
                owner = owner or (models or relatives)[0]
                text = json.dumps(metrics, indent=2, sort_keys=True, default=_plain_number) + "\n"
                with _replacing(worktree / (owner + CONVENTION_SUFFIX)) as temporary:
                    temporary.write_text(text)
                others.append(owner + CONVENTION_SUFFIX)
            with writer_lock(self._repo.theta_dir):
                for relative in models:
                    target = worktree / relative
                    clean_into_index(
                        self._git, self._store, relative, target, _settled_stat(target)
                    )
            if others:
                self._repo.git("add", operands=others)
            # Nothing new (a training loop saving the same state twice): no empty commit.
            unchanged = not self._git.head_is_unborn and not self._repo.git(
                "diff", "--cached", "--name-only", "-z"
            )
            if not unchanged:
                self._repo.git("commit", "-q", f"--message={message}")
            return self._repo.git("rev-parse", "HEAD").strip()

    def restore(self, path: str | os.PathLike[str], rev: str) -> None:
        """Write ``path`` as it was at ``rev``, byte for byte, and stage it
        (``git checkout <rev> -- <path>``).

        ``<path>.metrics.json`` is restored too when ``rev`` has one.
        """
        with _index_lock(self._repo.git_dir):
            relative = self._worktree_target(path)
            commit = resolve_commit(self._git, rev)
            blob = _blob_at(commit, relative, rev)
            target = self._repo.require_worktree() / relative
            content = read_blob(self._git, blob.id)
            fetcher = OnDemandFetcher(self._repo, str(commit.id))
            plan = smudge_or_fetch(content, self._store, relative, fetcher, repo=self._repo)
            with writer_lock(self._repo.theta_dir):
                write_atomically(plan, target, retry=f"Repository.restore({relative!r}, {rev!r})")
                write_index_entry(self._git, relative, blob.id, _settled_stat(target))
            if relative + CONVENTION_SUFFIX in commit.tree:
                self._repo.git(
                    "restore",
                    f"--source={commit.id}",
                    "--staged",
                    "--worktree",
                    operands=[relative + CONVENTION_SUFFIX],
                )

    # -- reading ----------------------------------------------------------------
    def load_state_dict(
        self, path: str | os.PathLike[str], rev: str = "HEAD", prefix: str = ""
    ) -> dict[str, torch.Tensor]:
        """The tensors of ``path`` at ``rev``, by name, read straight from their objects
        (no pickle).

        Names are the manifest's key paths (``model.fc1.weight``). With
        ``prefix``, only the names that start with it, with it removed:
        ``prefix="model."`` gives what ``model.load_state_dict`` expects from a
        ``{"model": model.state_dict(), ...}`` checkpoint. Every tensor has its
        own memory, even tied weights (``torch.load`` would share it).
        """
        import torch

        relative = self._relative(path)
        manifest = self._manifest_at(relative, rev)
        wanted = [t for t in manifest.tensors if t.name.startswith(prefix)]
        if any(not self._store.has(t.oid) for t in wanted):
            commit = str(resolve_commit(self._git, rev).id)
            OnDemandFetcher(self._repo, commit).fetch_missing(manifest.render())
        users: dict[str, int] = {}
        for tensor in wanted:
            users[tensor.oid] = users.get(tensor.oid, 0) + 1
        payloads: dict[str, torch.Tensor] = {}
        state: dict[str, torch.Tensor] = {}
        for tensor in wanted:
            torch_name = _TORCH_DTYPES.get(tensor.dtype)
            if torch_name is None:
                raise UnsupportedDTypeError(relative, tensor.name, tensor.dtype)
            if tensor.oid not in payloads:
                payloads[tensor.oid] = self._read_payload(tensor.oid, relative)
            raw = payloads[tensor.oid]
            dtype = getattr(torch, torch_name)
            # A storage's object may hold a tail that is not a whole element of this view's dtype.
            flat = raw[: raw.numel() // dtype.itemsize * dtype.itemsize].view(dtype)
            if tensor.stride is None:
                value = flat[: tensor.numel].view(tensor.shape)
            else:
                value = torch.as_strided(flat, tensor.shape, tensor.stride, tensor.offset or 0)
            shared = users[tensor.oid] > 1 or tensor.stride is not None
            state[tensor.name[len(prefix) :]] = (
                value.clone(memory_format=torch.contiguous_format) if shared else value
            )
        return state

    def _read_payload(self, oid: str, path: str) -> torch.Tensor:
        import torch

        file, header = self._store.open_verified(oid, path)
        payload = torch.empty(header.nbytes, dtype=torch.uint8)
        with file:
            # numpy's stubs give ndarray the buffer protocol only on Python 3.12 and later.
            view = memoryview(payload.numpy())  # type: ignore[arg-type]
            filled = 0
            while filled < header.nbytes:
                count = file.readinto(view[filled:])
                if not count:
                    raise ObjectMissingError(oid, path)
                filled += count
        return payload

    def _manifest_at(self, path: str, rev: str) -> Manifest:
        """The manifest of ``path`` at ``rev``; a raw or git-lfs version of a tracked file
        is read as the manifest ``git add`` would make (see :mod:`.raw_versions`).
        """
        from .raw_versions import VersionReader

        blob = _blob_at(resolve_commit(self._git, rev), path, rev)
        manifest = VersionReader(self._git).manifest(blob.id, path, where=rev)
        if manifest is None:
            raise ModelNotFoundError(path, rev)
        return manifest

    def history(self, path: str | os.PathLike[str], rev: str = "HEAD") -> list[HistoryEntry]:
        """The commits reachable from ``rev`` that changed ``path``, newest first
        (``git theta-log``).
        """
        from .stats import Statistician

        entries = self._log(self._relative(path), rev, Statistician.for_repo(self._repo.theta_dir))
        return [_history_entry(entry, entry.diff, entry.norms_available) for entry in entries]

    def best(
        self, path: str | os.PathLike[str], metric: str, mode: str | None = None, rev: str = "HEAD"
    ) -> HistoryEntry:
        """The commit with the best value of ``metric`` (``git theta-log --best``).

        ``mode`` is ``"max"`` or ``"min"``; by default losses and errors are
        minimised and everything else maximised. A unique dotted suffix of a
        metric name is enough (``acc`` for ``val.acc``). On a tie the oldest
        commit wins.
        """
        from .stats import Statistician
        from .tensor_diff import diff_manifests
        from .theta_log import best_entry

        if mode not in (None, "min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        # Choosing needs metrics only; the statistics are read for the winner alone.
        entries = self._log(self._relative(path), rev, None)
        name = resolve_metric(metric, {key for entry in entries for key in entry.metrics})
        winner, _ = best_entry(entries, name, mode)
        assert winner is not None  # resolve_metric found the name in some entry
        diff = diff_manifests(
            winner.change.old,
            winner.change.new,
            Statistician.for_repo(self._repo.theta_dir),
            path=winner.path,
        )
        return _history_entry(winner, diff, diff.summary.missing_objects == 0)

    def _log(self, path: str, rev: str, stats: Any) -> list[LogEntry]:
        from .theta_log import theta_log

        pathspec = Pathspec([path], self.path, self._repo.worktree)
        return theta_log(
            self._git,
            parse_range(self._git, [rev]),
            pathspec,
            declared_metrics_files(self._repo, self._git),
            lambda message: warnings.warn(printable(message), ThetaWarning, stacklevel=1),
            stats=stats,
        )


def _history_entry(entry: LogEntry, diff: ManifestDiff, norms_available: bool) -> HistoryEntry:
    summary = diff.summary
    available = norms_available
    return HistoryEntry(
        commit=str(entry.commit.id),
        date=entry.timestamp,
        subject=entry.subject,
        path=entry.path,
        metrics=dict(entry.metrics),
        norm=summary.new_norm if available else None,
        rel_change=summary.relative_change if available else None,
        tensors_changed=summary.theta_changed,
    )


def _blob_at(commit: pygit2.Commit, path: str, rev: str) -> pygit2.Blob:
    try:
        blob = commit.tree[path]
    except KeyError:
        raise ModelNotFoundError(path, rev) from None
    if not isinstance(blob, pygit2.Blob):
        raise ModelNotFoundError(path, rev)
    return blob


def _plain_number(value: Any) -> Any:
    """A 0-d tensor or numpy scalar as the Python number it holds, for json.dumps."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"metric value {value!r} is not a number")


@contextlib.contextmanager
def _replacing(target: Path) -> Iterator[Path]:
    """A path of ``target``'s name in a temporary directory beside it, renamed over
    ``target`` once written.

    So a file is replaced whole, and a symbolic link a commit put there (to a
    file outside the repository) is replaced, never written through.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with replaced_whole(target, ".theta-save-") as temporary:
        yield temporary


def _save(checkpoint: Any, target: Path) -> None:
    """Write the checkpoint to ``target`` atomically.

    It is saved under its own name (torch.save writes the file name's stem into
    the archive), so the bytes are those of saving to ``target`` directly.
    """
    with _replacing(target) as temporary:
        if target.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(checkpoint, str(temporary))
        else:
            import torch

            torch.save(checkpoint, temporary)


def _settled_stat(path: Path) -> os.stat_result:
    """The stat data of a file this process just wrote, after moving its mtime one second back.

    Git trusts an index entry's stat data only for a file older than the
    index file, in whole seconds ("racy git"); a file written in the same
    second as the index is read and cleaned again by the next status or
    commit. The file is new, written here, so its time is ours to choose.
    """
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - 1_000_000_000))
    return path.stat()
