"""Opening the object store a URL names.

A store URL is a path, a ``file://`` URL, ``s3://bucket/prefix`` or a Git LFS
endpoint ``lfs+https://host/org/repo.git/info/lfs``. boto3 and requests are
imported only when an S3 or LFS store is actually opened. Which store belongs to a git
remote is decided in ``remotes.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .base import ObjectStore, UnsupportedStoreURLError

__all__ = ["DEFAULT_TRANSFERS", "open_store", "path_from_url"]

DEFAULT_TRANSFERS = 8


def path_from_url(url: str, base: Path) -> Path | None:
    """The local path a store or git URL names, or None when it is not local.

    Absolute, with ``.`` and ``..`` resolved (as a path names them, not through
    symbolic links) whichever way it is spelled: a place a committed file names
    is compared with what the user allowed by this path, and opened by it
    (``file:///allowed/../elsewhere`` was compared as written).
    """
    if url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            return None
        return Path(os.path.abspath(unquote(parts.path)))
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
    if url.startswith("lfs+http://") or url.startswith("lfs+https://"):
        from .lfs import LfsStore
        from .lfs_endpoint import endpoint_from_lfs_url

        endpoint = endpoint_from_lfs_url(url.removeprefix("lfs+"))
        if endpoint is None:
            raise UnsupportedStoreURLError(url)
        return LfsStore(endpoint)
    if url.startswith("s3://"):
        from .s3 import S3Store  # boto3 is heavy: only S3 users pay for it

        return S3Store.from_url(url, endpoint_url=s3_endpoint, workers=workers)
    path = path_from_url(url, base)
    if path is None:
        raise UnsupportedStoreURLError(url)
    from .directory import DirectoryStore

    return DirectoryStore(path, url=url, anchor=anchor)
