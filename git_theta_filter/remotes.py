"""Where a git remote's object store is, and how many objects move at once.

Which store belongs to a git remote is decided here, highest precedence first
(``docs/remotes.md``):

1. ``git config theta.remote.<remote>.url``;
2. for a git remote that is a local path, that repository's own store:
   ``<repo>/theta/objects`` when it is bare, ``<repo>/.git/theta/objects`` when not
   (a store already known: a committed file does not move it);
3. ``theta.url`` in a committed ``.thetaconfig`` (git-config syntax), read from
   the work tree, else the index, else HEAD (or from a given revision), once
   :func:`committed_urls.admit` lets it be used;
4. for an ``http(s)://``, ``ssh://`` or scp-like remote, its Git LFS server
   (``lfs_remote.py``: ``remote.<remote>.lfsurl``, ``lfs.url``, or the remote's
   URL with ``.git/info/lfs`` appended).

The S3 endpoint of an ``s3://`` store: ``git config theta.s3.endpoint``, else
the user's AWS settings (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, the AWS
config files), else ``theta.s3.endpoint`` in ``.thetaconfig`` once admitted.

Opening the store a URL names is ``store/remote.py``'s job.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ThetaError
from .gitrepo import GitRepo
from .store.base import ObjectStore
from .store.remote import DEFAULT_TRANSFERS, open_store, path_from_url

if TYPE_CHECKING:  # the LFS modules load only when a remote needs them (filter start-up)
    from .committed_config import CommittedConfig
    from .store.lfs_endpoint import LfsEndpoint

__all__ = [
    "StoreConfigError",
    "NoStoreError",
    "StoreLocation",
    "THETACONFIG",
    "HELPER_PREFIX",
    "locate_store",
    "resolve_store",
    "require_store",
    "transfer_workers",
    "default_remote",
    "local_repository_path",
    "remotes_in_lookup_order",
    "remotes_to_try",
]

THETACONFIG = ".thetaconfig"
# Remote URLs that go through git-remote-theta; the rest is the inner git URL.
HELPER_PREFIX = "theta::"


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
            hint=f"set one with `git config {shlex.quote(f'theta.remote.{remote}.url')} "
            "<path|s3://bucket/prefix|lfs+https://host/repo.git/info/lfs>` "
            f"or a committed {THETACONFIG} (see docs/remotes.md)",
        )
        self.remote = remote


class _Refused:
    """A committed S3 endpoint that may not be contacted."""


_REFUSED = _Refused()


@dataclass(frozen=True)
class StoreLocation:
    """A store URL and, for a repository's own store, the git dir that must exist
    (its ``theta/`` may not, yet)."""

    url: str
    anchor: Path | None = None
    # A Git LFS server: found from the remote, or admitted from a committed file.
    lfs: LfsEndpoint | None = None
    # Named by a committed .thetaconfig (and admitted: docs/security.md, class 2).
    committed: bool = False
    # An s3:// store's endpoint, when one other than boto3's own choice is to be used.
    s3_endpoint: str | _Refused | None = None
    # Another repository's own store (its theta dir): the remote is a local path.
    repository: Path | None = None


def _thetaconfig(repo: GitRepo, revision: str | None) -> CommittedConfig | None:
    """The committed .thetaconfig: of ``revision``, else the work tree, index or HEAD,
    read the one careful way (``committed_config.py``)."""
    from .committed_config import read_committed_config

    return read_committed_config(repo, THETACONFIG, revision)


def local_repository_path(repo: GitRepo, remote_url: str) -> Path | None:
    """The git dir behind a remote URL that is a local path, or None."""
    path = path_from_url(remote_url.removeprefix(HELPER_PREFIX), repo.cwd)
    if path is None:
        return None
    if (path / ".git").is_dir():
        return path / ".git"
    if (path / "HEAD").is_file() and (path / "objects").is_dir():
        return path
    return None


def _remote_url(repo: GitRepo, remote: str) -> str:
    """The URL of a configured remote (insteadOf applied), or ``remote`` itself when it is a URL."""
    url = repo.git("remote", "get-url", operands=[remote], check=False).strip()
    return url or remote


def locate_store(
    repo: GitRepo, remote: str, remote_url: str | None = None, revision: str | None = None
) -> StoreLocation | None:
    """Where the store of ``remote`` is, by the precedence in the module docstring."""
    configured = repo.config_get(f"theta.remote.{remote}.url")
    if configured:
        return StoreLocation(configured, s3_endpoint=_s3_endpoint(repo, configured, revision))
    url = remote_url or _remote_url(repo, remote)
    git_dir = local_repository_path(repo, url)
    if git_dir is not None:
        theta_dir = git_dir / "theta"
        return StoreLocation(str(theta_dir / "objects"), anchor=git_dir, repository=theta_dir)
    committed = _committed_store(repo, url, revision)
    if committed is not None:
        return committed
    from .lfs_remote import lfs_endpoint

    endpoint = lfs_endpoint(repo, remote, url)
    if endpoint is not None:
        return StoreLocation(endpoint.store_url, lfs=endpoint)
    return None


def _committed_store(repo: GitRepo, remote_url: str, revision: str | None) -> StoreLocation | None:
    """``theta.url`` of the committed .thetaconfig, when :func:`committed_urls.admit` lets
    it be used (with its S3 endpoint, if it needs one)."""
    config = _thetaconfig(repo, revision)
    url = config.get("theta.url") if config is not None else None
    if not url:
        return None
    from .committed_urls import CommittedPlace, admit, directory_place

    if url.startswith("s3://"):
        endpoint = _s3_endpoint(repo, url, revision, config)
        if endpoint is _REFUSED:
            return None
        return StoreLocation(url, committed=True, s3_endpoint=endpoint)
    if url.startswith("lfs+"):
        from .lfs_remote import explicit_endpoint

        lfs = explicit_endpoint(url)
        if lfs is None:
            return StoreLocation(url, committed=True)  # not a store URL: refused when opened
        place = CommittedPlace(THETACONFIG, "theta.url", "LFS server", lfs.store_url)
        if not admit(repo, place, lfs=lfs, remote_url=remote_url):
            return None
        return StoreLocation(url, committed=True, lfs=lfs)
    directory = directory_place(THETACONFIG, "theta.url", url, repo.cwd)
    if directory is not None and not admit(repo, directory):
        return None
    return StoreLocation(url, committed=True)


def transfer_workers(repo: GitRepo) -> int:
    """``theta.transfers``: how many objects move at once (default 8)."""
    value = repo.config_get("theta.transfers")
    if value is None:
        return DEFAULT_TRANSFERS
    if not re.fullmatch(r"[1-9][0-9]{0,3}", value):
        raise StoreConfigError("theta.transfers", value, "a whole number from 1 to 9999")
    return int(value)


def _s3_endpoint(
    repo: GitRepo, store_url: str, revision: str | None, config: CommittedConfig | None = None
) -> str | _Refused | None:
    """The endpoint of an ``s3://`` store: the user's git config, else None (boto3 then
    takes the user's AWS settings, or AWS itself), else the committed one once admitted."""
    if not store_url.startswith("s3://"):
        return None
    user = repo.config_get("theta.s3.endpoint")
    if user:
        return user
    config = config if config is not None else _thetaconfig(repo, revision)
    committed = config.get("theta.s3.endpoint") if config is not None else None
    if not committed:
        return None
    from .committed_urls import CommittedPlace, admit
    from .store.s3 import configured_endpoint

    if configured_endpoint() is not None:
        return None  # AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or the AWS config files: the user's
    place = CommittedPlace(THETACONFIG, "theta.s3.endpoint", "S3 endpoint", committed.rstrip("/"))
    return committed if admit(repo, place) else _REFUSED


def resolve_store(
    repo: GitRepo, remote: str, remote_url: str | None = None, revision: str | None = None
) -> ObjectStore | None:
    """The store of ``remote``, opened; None when none is configured or derivable."""
    location = locate_store(repo, remote, remote_url, revision)
    if location is None:
        return None
    if location.lfs is not None or location.url.startswith("lfs+"):
        from .lfs_remote import explicit_endpoint, open_lfs_store

        lfs = location.lfs or explicit_endpoint(location.url)
        if lfs is not None:
            return open_lfs_store(repo, lfs)
    if location.repository is not None:
        from .store.repository import RepositoryStore

        return RepositoryStore(location.repository, url=location.url, anchor=location.anchor)
    endpoint = location.s3_endpoint
    return open_store(
        location.url,
        base=repo.cwd,
        s3_endpoint=endpoint if isinstance(endpoint, str) else None,
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


def remotes_in_lookup_order(repo: GitRepo, commit: str | None = None) -> list[str]:
    """The remotes, in the order an object missing here is looked for (docs/remotes.md).

    First those whose remote-tracking refs contain ``commit`` (the commit being
    read, when known), then the current branch's remote (:func:`default_remote`),
    then every other remote (in the order `git remote` lists them).
    """
    remotes = repo.git("remote", check=False).split()
    containing: list[str] = []
    if commit:
        listing = repo.git(
            "for-each-ref",
            "--format=%(refname)",
            f"--contains={commit}",
            "refs/remotes/",
            check=False,
        )
        refs = listing.split()
        containing = [
            r for r in remotes if any(ref.startswith(f"refs/remotes/{r}/") for ref in refs)
        ]
    return list(dict.fromkeys([*containing, default_remote(repo), *remotes]))


def remotes_to_try(repo: GitRepo, commit: str | None = None) -> Iterator[tuple[str, ObjectStore]]:
    """``(remote, store)`` for every remote that has a store, in lookup order; each store is
    opened only when the one before it did not have what was wanted."""
    for remote in remotes_in_lookup_order(repo, commit):
        store = resolve_store(repo, remote)
        if store is not None:
            yield remote, store
