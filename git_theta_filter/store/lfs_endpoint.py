"""Where a Git LFS server is: its URL from a git remote's URL or from an explicit setting.

The rules are git-lfs's server discovery (``docs/remotes.md``):

* an explicit LFS URL (``remote.<name>.lfsurl``, ``lfs.url``, or a store URL
  ``lfs+https://…``) is the endpoint itself;
* an ``http(s)://`` remote's endpoint is its URL with ``.git/info/lfs``
  appended, or just ``/info/lfs`` when it already ends in ``.git``;
* an ``ssh://`` or scp-like (``git@host:org/repo.git``) remote's endpoint is
  ``https://<host>/<path>`` treated the same way, and before each use the
  server is asked over ssh (``git-lfs-authenticate``, ``store/lfs_ssh.py``)
  for headers and possibly another href;
* path and ``file://`` remotes have no LFS endpoint (their store is a directory).

A user name and password written into a URL are taken out of it: the URL in
every message is the bare one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = [
    "LFS_SCHEME_PREFIX",
    "SshTarget",
    "LfsEndpoint",
    "endpoint_from_lfs_url",
    "endpoint_from_remote_url",
    "scp_like_parts",
]

# A store URL naming an LFS endpoint: lfs+https://host/org/repo.git/info/lfs
LFS_SCHEME_PREFIX = "lfs+"
_HELPER_PREFIX = "theta::"
# "<transport>::<address>" runs git-remote-<transport>: not a host name and path.
_REMOTE_HELPER = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")


@dataclass(frozen=True)
class SshTarget:
    """Where ``git-lfs-authenticate`` runs: ``ssh [-p port] <user_and_host> …<path>``."""

    user_and_host: str
    path: str
    port: int | None = None


@dataclass(frozen=True)
class LfsEndpoint:
    """An LFS server URL (…/info/lfs, no credentials in it) and how to authenticate to it."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssh: SshTarget | None = None
    # Named by the user's own git config (not only by a committed file): such an
    # endpoint may get credentials even over plain http, as the user chose it.
    user_configured: bool = True

    @property
    def store_url(self) -> str:
        """How the store is named in messages: ``lfs+<url>``."""
        return LFS_SCHEME_PREFIX + self.url


def _without_userinfo(url: str) -> tuple[str, str | None, str | None]:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    password = unquote(parts.password) if parts.password is not None else None
    return bare, unquote(parts.username or "") or None, password


def scp_like_parts(url: str) -> tuple[str, str] | None:
    """``(user_and_host, path)`` of an scp-like URL ``[user@]host:path``, else None.

    Git reads ``host:path`` as ssh only when the colon comes before any slash.
    """
    if "://" in url or _REMOTE_HELPER.match(url):
        return None
    colon, slash = url.find(":"), url.find("/")
    if colon <= 0 or (slash != -1 and slash < colon):
        return None
    user_and_host, path = url[:colon], url[colon + 1 :]
    if user_and_host.startswith("[") and user_and_host.endswith("]"):
        user_and_host = user_and_host[1:-1]
    return user_and_host, path


def _ssh_endpoint(user_and_host: str, port: int | None, path: str) -> LfsEndpoint | None:
    host = user_and_host.rpartition("@")[2]
    if not host or host.startswith("-") or user_and_host.startswith("-"):
        return None  # would reach ssh as an option (CVE-2017-1000117)
    path = path.lstrip("/")
    https = f"https://{host}/{quote(path, safe='/~.-_+@')}"
    return LfsEndpoint(url=https, ssh=SshTarget(user_and_host, path, port))


def _with_info_lfs(url: str) -> str:
    url = url.rstrip("/")
    return f"{url}/info/lfs" if url.endswith(".git") else f"{url}.git/info/lfs"


def endpoint_from_lfs_url(url: str, *, user_configured: bool = True) -> LfsEndpoint | None:
    """The endpoint an explicit LFS URL names (``lfs.url``; ``lfs+`` already removed), or None
    when it is not an http(s) URL with a host, nor an ssh URL."""
    if url.startswith(("http://", "https://")):
        if not _names_a_host(url):
            return None
        bare, username, password = _without_userinfo(url.rstrip("/"))
        return LfsEndpoint(bare, username, password, user_configured=user_configured)
    endpoint = _ssh_from_url(url)
    if endpoint is None:
        return None
    return LfsEndpoint(endpoint.url, ssh=endpoint.ssh, user_configured=user_configured)


def _names_a_host(url: str) -> bool:
    """Whether an http(s) URL has a host and, if it gives one, a valid port: requests
    would otherwise fail on its first request with an error that names no setting."""
    try:
        parts = urlsplit(url)
        return bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:  # a port out of range or not a number, an unclosed "["
        return False


def _ssh_from_url(url: str) -> LfsEndpoint | None:
    if url.startswith("ssh://"):
        parts = urlsplit(url)
        if not parts.hostname:
            return None
        user = f"{unquote(parts.username)}@" if parts.username else ""
        try:
            port = parts.port
        except ValueError:
            return None
        return _ssh_endpoint(user + parts.hostname, port, unquote(parts.path))
    scp = scp_like_parts(url)
    if scp is None:
        return None
    return _ssh_endpoint(scp[0], None, scp[1])


def endpoint_from_remote_url(url: str) -> LfsEndpoint | None:
    """The endpoint git-lfs derives from a git remote's URL, or None for path and file remotes."""
    url = url.removeprefix(_HELPER_PREFIX)
    if _REMOTE_HELPER.match(url):
        return None  # another remote helper's URL: git-lfs has no endpoint for it either
    if url.startswith(("http://", "https://")):
        bare, username, password = _without_userinfo(url)
        return LfsEndpoint(_with_info_lfs(bare), username, password)
    if url.startswith("git://"):
        # git-lfs's lfs.gitprotocol default: the same host and path over https.
        return LfsEndpoint(_with_info_lfs("https://" + url.removeprefix("git://")))
    endpoint = _ssh_from_url(url)
    if endpoint is None:
        return None
    return LfsEndpoint(_with_info_lfs(endpoint.url), ssh=endpoint.ssh)
