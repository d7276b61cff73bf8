"""Object stores other than this repository's own, and where a remote's store is configured.

Every store holds objects under the names of the local store (``docs/store.md``):
``aa/bb/<oid>`` below its root, the oid being the sha256 of the object's bytes.
A store is reached through :class:`ObjectStore`, the one interface that the
transfer code knows: ``has``/``batch_has``, ``get`` (streamed to a file),
``put`` (streamed from a file) and ``list``.

Which store belongs to a git remote is decided here, highest precedence first
(``docs/remotes.md``):

1. ``git config theta.remote.<remote>.url``;
2. ``theta.url`` in a committed ``.thetaconfig`` (git-config syntax), read from
   the work tree, else the index, else HEAD (or from a given revision);
3. for a git remote that is a local path, that repository's own store:
   ``<repo>/theta/objects`` when it is bare, ``<repo>/.git/theta/objects`` when not.

A store URL is a path, a ``file://`` URL or ``s3://bucket/prefix``. boto3 is
imported only when an S3 store is actually opened.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import ThetaError
from ..gitrepo import GitRepo

__all__ = [
    "ObjectStore",
    "StoreError",
    "StoreUnavailableError",
    "RemoteObjectMissingError",
    "UnsupportedStoreURLError",
    "StoreConfigError",
    "NoStoreError",
    "StoreLocation",
    "THETACONFIG",
    "HELPER_PREFIX",
    "DEFAULT_TRANSFERS",
    "open_store",
    "locate_store",
    "resolve_store",
    "require_store",
    "transfer_workers",
    "default_remote",
    "local_repository_path",
]

THETACONFIG = ".thetaconfig"
DEFAULT_TRANSFERS = 8
# Remote URLs that go through git-remote-theta; the rest is the inner git URL.
HELPER_PREFIX = "theta::"


class StoreError(ThetaError):
    """A remote object store could not do what was asked; names the store and, if any,
    the object.
    """

    def __init__(
        self, url: str, message: str, *, oid: str | None = None, hint: str | None = None
    ) -> None:
        subject = f"object {oid} in {url}" if oid else f"object store {url}"
        super().__init__(f"{subject}: {message}", hint=hint)
        self.url = url
        self.oid = oid


class StoreUnavailableError(StoreError):
    """The store cannot be reached, does not exist, or refuses us."""

    def __init__(self, url: str, reason: str, *, oid: str | None = None) -> None:
        super().__init__(
            url,
            f"unavailable ({reason})",
            oid=oid,
            hint="check the store URL (docs/remotes.md), the network and your credentials",
        )
        self.reason = reason


class RemoteObjectMissingError(StoreError):
    """The store does not hold an object that was asked for."""

    def __init__(self, url: str, oid: str) -> None:
        super().__init__(
            url, "is not there", oid=oid, hint="push it from a clone that has it: `git theta push`"
        )


class UnsupportedStoreURLError(StoreError):
    def __init__(self, url: str) -> None:
        super().__init__(url, "has an unsupported URL; use a path, file:// or s3://bucket/prefix")


class StoreConfigError(ThetaError):
    """A theta.* configuration value that cannot be used."""

    def __init__(self, key: str, value: str, expected: str) -> None:
        super().__init__(f"git config {key} is {value!r}; expected {expected}")
        self.key = key
        self.value = value


class NoStoreError(ThetaError):
    """No object store is configured for a remote, and none can be derived."""

    def __init__(self, remote: str) -> None:
        super().__init__(
            f"no object store for remote {remote!r}",
            hint=f"set one with `git config theta.remote.{remote}.url <path|s3://bucket/prefix>` "
            f"or a committed {THETACONFIG} (see docs/remotes.md)",
        )
        self.remote = remote


class ObjectStore(ABC):
    """Where objects are shared. Implementations must be safe to call from several threads."""

    url: str

    @abstractmethod
    def has(self, oid: str) -> bool:
        """Whether the store holds ``oid``."""

    def batch_has(self, oids: Iterable[str]) -> set[str]:
        """The subset of ``oids`` the store holds."""
        return {oid for oid in oids if self.has(oid)}

    @abstractmethod
    def get(self, oid: str, destination: Path) -> None:
        """Write the object's bytes to ``destination`` (replacing it); unverified.

        Raises :class:`RemoteObjectMissingError` when the store lacks it.
        """

    @abstractmethod
    def put(self, oid: str, source: Path) -> bool:
        """Store the file ``source`` as ``oid``, never replacing an existing object.

        Returns False when the object was already there.
        """

    @abstractmethod
    def list(self) -> Iterator[str]:
        """Every object id in the store."""


def _path_from_url(url: str, base: Path) -> Path | None:
    """The local path a store or git URL names, or None when it is not local."""
    if url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            return None
        return Path(unquote(parts.path))
    if "://" in url:
        return None
    colon, slash = url.find(":"), url.find("/")
    if colon != -1 and (slash == -1 or colon < slash):
        return None  # scp-like "host:path", which git reads as ssh
    return Path(os.path.abspath(base / Path(url).expanduser()))


def open_store(
    url: str,
    *,
    base: Path,
    s3_endpoint: str | None = None,
    workers: int = DEFAULT_TRANSFERS,
    anchor: Path | None = None,
) -> ObjectStore:
    """The store a URL names; relative paths are taken from ``base``.

    A directory store must have ``anchor`` (default: its parent directory) in place.
    """
    if url.startswith("s3://"):
        from .s3 import S3Store  # boto3 is heavy: only S3 users pay for it

        return S3Store.from_url(url, endpoint_url=s3_endpoint, workers=workers)
    path = _path_from_url(url, base)
    if path is None:
        raise UnsupportedStoreURLError(url)
    from .directory import DirectoryStore

    return DirectoryStore(path, url=url, anchor=anchor)


@dataclass(frozen=True)
class StoreLocation:
    """A store URL and, for a repository's own store, the git dir that must exist
    (its ``theta/`` may not, yet)."""

    url: str
    anchor: Path | None = None


def _thetaconfig_get(repo: GitRepo, key: str, revision: str | None) -> str | None:
    """``key`` from the committed .thetaconfig: of ``revision``, else the work tree,
    index or HEAD.
    """
    if revision is not None:
        sources = [["--blob", f"{revision}:{THETACONFIG}"]]
    else:
        sources = []
        if repo.worktree is not None and (repo.worktree / THETACONFIG).is_file():
            sources.append(["--file", str(repo.worktree / THETACONFIG)])
        sources += [["--blob", f":{THETACONFIG}"], ["--blob", f"HEAD:{THETACONFIG}"]]
    for source in sources:
        # A blob that does not exist makes git config fail; that is "not set".
        value = repo.git("config", *source, "--get", key, check=False).strip()
        if value:
            return value
    return None


def local_repository_path(repo: GitRepo, remote_url: str) -> Path | None:
    """The git dir behind a remote URL that is a local path, or None."""
    path = _path_from_url(remote_url.removeprefix(HELPER_PREFIX), repo.cwd)
    if path is None:
        return None
    if (path / ".git").is_dir():
        return path / ".git"
    if (path / "HEAD").is_file() and (path / "objects").is_dir():
        return path
    return None


def _remote_url(repo: GitRepo, remote: str) -> str:
    """The URL of a configured remote (insteadOf applied), or ``remote`` itself when it is a URL."""
    url = repo.git("remote", "get-url", remote, check=False).strip()
    return url or remote


def locate_store(
    repo: GitRepo, remote: str, remote_url: str | None = None, revision: str | None = None
) -> StoreLocation | None:
    """Where the store of ``remote`` is, by the precedence in the module docstring."""
    key = f"theta.remote.{remote}.url"
    configured = repo.config_get(key)
    if configured:
        return StoreLocation(configured)
    committed = _thetaconfig_get(repo, "theta.url", revision)
    if committed:
        return StoreLocation(committed)
    url = remote_url or _remote_url(repo, remote)
    git_dir = local_repository_path(repo, url)
    if git_dir is not None:
        return StoreLocation(str(git_dir / "theta" / "objects"), anchor=git_dir)
    return None


def transfer_workers(repo: GitRepo) -> int:
    """``theta.transfers``: how many objects move at once (default 8)."""
    value = repo.config_get("theta.transfers")
    if value is None:
        return DEFAULT_TRANSFERS
    if not re.fullmatch(r"[1-9][0-9]{0,3}", value):
        raise StoreConfigError("theta.transfers", value, "a whole number from 1 to 9999")
    return int(value)


def _s3_endpoint(repo: GitRepo, revision: str | None) -> str | None:
    return (
        repo.config_get("theta.s3.endpoint")
        or _thetaconfig_get(repo, "theta.s3.endpoint", revision)
        or os.environ.get("AWS_ENDPOINT_URL")
    )


def resolve_store(
    repo: GitRepo, remote: str, remote_url: str | None = None, revision: str | None = None
) -> ObjectStore | None:
    """The store of ``remote``, opened; None when none is configured or derivable."""
    location = locate_store(repo, remote, remote_url, revision)
    if location is None:
        return None
    endpoint = _s3_endpoint(repo, revision) if location.url.startswith("s3://") else None
    return open_store(
        location.url,
        base=repo.cwd,
        s3_endpoint=endpoint,
        workers=transfer_workers(repo),
        anchor=location.anchor,
    )


def require_store(repo: GitRepo, remote: str) -> ObjectStore:
    store = resolve_store(repo, remote)
    if store is None:
        raise NoStoreError(remote)
    return store


def default_remote(repo: GitRepo) -> str:
    """The current branch's remote, else ``origin``, else the only remote there is."""
    branch = repo.git("symbolic-ref", "--quiet", "--short", "HEAD", check=False).strip()
    if branch:
        upstream = repo.config_get(f"branch.{branch}.remote")
        if upstream and upstream != ".":
            return upstream
    remotes = repo.git("remote", check=False).split()
    if "origin" in remotes or len(remotes) != 1:
        return "origin"
    return remotes[0]
