"""The one gate for places a committed file names (docs/security.md, class 2).

``.thetaconfig`` (``theta.url``, ``theta.s3.endpoint``) and ``.lfsconfig``
(``lfs.url``, ``remote.<name>.lfsurl``) are written by whoever made the
commit. What they name is where the user's credentials and tensors would go,
or a directory on the user's disk. :func:`admit` decides, for every such
value, whether it may be used:

* a place the user allowed: ``git config --add theta.allowUrl <url>``
  (multi-valued; a value allows that URL and everything below it, on a
  ``/`` boundary; a directory is allowed by its absolute path or
  ``file://`` URL);
* an LFS server on the git remote's own host, over https or ssh (or over
  http when the remote itself is http there): the user already sends this
  repository to that host;
* an S3 endpoint of AWS's own, over https.

Anything else, every directory included, is not contacted or opened: one
line on stderr says what the file asks for and the command that allows it.
A directory counts as private data: a committed path could point a fetch at
another project's store, or a push at any directory the user can write.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from .gitrepo import GitRepo
from .store.lfs_endpoint import LfsEndpoint, endpoint_from_remote_url
from .store.remote import path_from_url
from .terminal import printable

__all__ = ["ALLOW_KEY", "CommittedPlace", "admit", "directory_place", "is_aws_endpoint"]

ALLOW_KEY = "theta.allowUrl"
_AWS_DOMAINS = ("amazonaws.com", "amazonaws.com.cn")
_noticed: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class CommittedPlace:
    """A place a committed file names: ``url`` is a URL (credentials taken out)
    or an absolute directory path, as the user would allow it."""

    file: str  # ".thetaconfig" or ".lfsconfig"
    key: str  # the key that named it, e.g. "theta.url"
    kind: str  # "object store", "S3 endpoint", "LFS server"
    url: str


def is_aws_endpoint(url: str) -> bool:
    """An https endpoint on one of AWS's own domains."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and any(
        host == domain or host.endswith("." + domain) for domain in _AWS_DOMAINS
    )


def _is_directory(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _normalized(url: str) -> tuple[str, str, str]:
    """(scheme, host and port, path) with case-insensitive parts lowered, and the path
    decoded and without ``.`` or ``..`` (which requests and servers resolve)."""
    parts = urlsplit(url.removeprefix("lfs+"))
    path = posixpath.normpath(unquote(parts.path)) if parts.path else ""
    return parts.scheme.lower(), parts.netloc.lower(), path.rstrip("/")


def _allows(value: str, place: CommittedPlace) -> bool:
    value = value.strip()
    if not value:
        return False
    if _is_directory(place.url):
        if not _is_directory(value):
            return False
        allowed = urlsplit(value).path if value.startswith("file://") else value
        if not PurePosixPath(allowed).is_absolute():
            return False
        # Compared where each really is: a symbolic link below the allowed directory (on a
        # shared disk, whoever can write there can make one) leads anywhere.
        wanted = PurePosixPath(os.path.realpath(place.url))
        return _within(wanted, PurePosixPath(os.path.realpath(allowed)))
    if _is_directory(value):
        return False
    scheme, netloc, path = _normalized(value)
    want_scheme, want_netloc, want_path = _normalized(place.url)
    return (scheme, netloc) == (want_scheme, want_netloc) and (
        want_path == path or want_path.startswith(path + "/")
    )


def _within(path: PurePosixPath, directory: PurePosixPath) -> bool:
    return path == directory or directory in path.parents


def _on_the_remotes_host(endpoint: LfsEndpoint, remote_url: str | None) -> bool:
    """An LFS server on the host the git remote already is, reached by ssh, https, or
    the remote's own scheme (http only when the remote itself is http there)."""
    derived = endpoint_from_remote_url(remote_url) if remote_url else None
    if derived is None:
        return False
    own, asked = urlsplit(derived.url), urlsplit(endpoint.url)
    if (asked.hostname or "").lower() != (own.hostname or "").lower():
        return False
    return endpoint.ssh is not None or asked.scheme in ("https", own.scheme)


def _allowed_values(repo: GitRepo) -> list[str]:
    """Every ``theta.allowUrl`` in the user's git config."""
    listing = repo.git("config", "--get-all", operands=[ALLOW_KEY], check=False)
    return [line for line in listing.splitlines() if line.strip()]


def admit(
    repo: GitRepo,
    place: CommittedPlace,
    *,
    lfs: LfsEndpoint | None = None,
    remote_url: str | None = None,
) -> bool:
    """Whether ``place`` may be contacted or opened; if not, say so once, in one line.

    For an LFS server, ``lfs`` is its endpoint and ``remote_url`` the git
    remote's URL, whose host it may share.
    """
    if place.kind == "S3 endpoint" and is_aws_endpoint(place.url):
        return True
    if lfs is not None and _on_the_remotes_host(lfs, remote_url):
        return True
    if any(_allows(value, place) for value in _allowed_values(repo)):
        return True
    if (place.file, place.url) not in _noticed:
        _noticed.add((place.file, place.url))
        allow = f"git config --add {ALLOW_KEY} {shlex.quote(place.url)}"
        print(
            f"git-theta: {place.file} asks to use {printable(place.url)} as {place.kind} "
            f"({place.key}), which you have not allowed; not used. To allow it: "
            f"{printable(allow)}",
            file=sys.stderr,
        )
    return False


def directory_place(file: str, key: str, url: str, base: Path) -> CommittedPlace | None:
    """The place a committed directory store URL names, by its absolute path; None if
    ``url`` is not a directory."""
    path = path_from_url(url, base) if _is_directory(url) else None
    if path is None:
        return None
    return CommittedPlace(file, key, "object store", str(path))
