"""A git remote's Git LFS server as its object store: discovery and settings from git config.

``store/lfs.py`` talks to the server; this module decides, from the
repository's configuration, which server and how (``docs/remotes.md``):

* **Endpoint**, highest precedence first: ``remote.<remote>.lfsurl``, then
  ``lfs.url`` (both from git config), then the same two keys in a committed
  ``.lfsconfig`` (on the git remote's own host, or once the user allowed the
  URL: see below), then the remote's URL with
  ``.git/info/lfs`` appended (``store/lfs_endpoint.py``).
* **Settings**: ``lfs.concurrenttransfers`` (parallel transfers),
  ``lfs.transfer.maxretries``, ``lfs.transfer.maxretrydelay``,
  ``lfs.dialtimeout``, ``lfs.activitytimeout``, ``theta.lfs.maxObjectSize``;
  per URL, ``http.extraHeader``, ``http.sslCAInfo`` and ``http.sslVerify``
  (with ``GIT_SSL_CAINFO`` and ``GIT_SSL_NO_VERIFY``), matched as git matches
  ``http.<url>.*``; the ssh program from ``GIT_SSH_COMMAND``, ``GIT_SSH`` or
  ``core.sshCommand``.

**A committed ``.lfsconfig``** is written by whoever pushed it. Only
``remote.<name>.lfsurl`` and ``lfs.url`` are read from it (read safely by
``committed_config.py``), and its URL goes through ``committed_urls.admit``:
used when it is on the git remote's own host over https or ssh, or when the
user allowed it (``git config --add theta.allowUrl <url>``). Anything else is
not contacted: one line says what the file asks for and the command that
allows it.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .errors import ThetaError
from .git_credential import GitCredentials
from .gitrepo import GitRepo
from .store.lfs_endpoint import (
    LFS_SCHEME_PREFIX,
    LfsEndpoint,
    endpoint_from_lfs_url,
    endpoint_from_remote_url,
)

if TYPE_CHECKING:  # requests is imported only when an LFS store is opened
    from .store.lfs import HttpOptions, LfsStore

__all__ = [
    "LFSCONFIG",
    "LfsConfigError",
    "GitConfig",
    "lfs_endpoint",
    "explicit_endpoint",
    "open_lfs_store",
    "max_object_size",
    "http_options_for",
]

LFSCONFIG = ".lfsconfig"
_SIZE = re.compile(r"([0-9]{1,15})([kmg]?)\Z", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class LfsConfigError(ThetaError):
    """An lfs.* or theta.lfs.* setting that cannot be used."""

    def __init__(self, key: str, value: str, expected: str) -> None:
        super().__init__(f"git config {key} is {value!r}; expected {expected}")
        self.key = key
        self.value = value


class GitConfig:
    """All of a repository's git config, read once (``git config -z --list``), in file order."""

    def __init__(self, repo: GitRepo) -> None:
        self.entries: list[tuple[str, str]] = []
        for item in repo.git("config", "-z", "--list", check=False).split("\0"):
            key, _, value = item.partition("\n")
            if key:
                self.entries.append((_canonical_key(key), value))

    def get(self, key: str) -> str | None:
        """The last value of ``key`` (git's rule for single-valued keys)."""
        wanted = _canonical_key(key)
        found = None
        for name, value in self.entries:
            if name == wanted:
                found = value
        return found

    def integer(self, key: str, minimum: int = 0) -> int | None:
        """A whole number with git's optional k/m/g suffix."""
        value = self.get(key)
        if value is None:
            return None
        match = _SIZE.match(value.strip())
        if match is None or int(match[1]) * _UNITS[match[2].lower()] < minimum:
            raise LfsConfigError(key, value, f"a whole number of at least {minimum}")
        return int(match[1]) * _UNITS[match[2].lower()]


def _canonical_key(key: str) -> str:
    """git's key form: section and variable lower case, a subsection as written."""
    section, dot, rest = key.partition(".")
    if not dot:
        return key.lower()
    subsection, dot, variable = rest.rpartition(".")
    if not dot:
        return f"{section.lower()}.{rest.lower()}"
    return f"{section.lower()}.{subsection}.{variable.lower()}"


def explicit_endpoint(url: str) -> LfsEndpoint | None:
    """The endpoint a store URL ``lfs+https://…`` (or ``lfs+http://``) names."""
    if not url.startswith(LFS_SCHEME_PREFIX + "http"):
        return None
    return endpoint_from_lfs_url(url.removeprefix(LFS_SCHEME_PREFIX))


def lfs_endpoint(
    repo: GitRepo, remote: str, remote_url: str, config: GitConfig | None = None
) -> LfsEndpoint | None:
    """The LFS server of ``remote`` by the precedence in the module docstring, or None."""
    config = config or GitConfig(repo)
    for key in (f"remote.{remote}.lfsurl", "lfs.url"):
        value = config.get(key)
        if value:
            return endpoint_from_lfs_url(value)
    return _committed_endpoint(repo, remote, remote_url) or endpoint_from_remote_url(remote_url)


def _committed_endpoint(repo: GitRepo, remote: str, remote_url: str) -> LfsEndpoint | None:
    """The endpoint a committed .lfsconfig names, when :func:`committed_urls.admit` lets it
    be used. Only ``remote.<remote>.lfsurl`` and ``lfs.url`` are read from the file."""
    from .committed_config import read_committed_config
    from .committed_urls import CommittedPlace, admit

    lfsconfig = read_committed_config(repo, LFSCONFIG)
    if lfsconfig is None:
        return None
    for key in (f"remote.{remote}.lfsurl", "lfs.url"):
        value = lfsconfig.get(key)
        endpoint = endpoint_from_lfs_url(value) if value else None
        if endpoint is None:
            continue
        assert value is not None  # an endpoint was made from it
        shown = value if endpoint.ssh is not None else endpoint.url
        place = CommittedPlace(LFSCONFIG, key, "LFS server", shown)
        return endpoint if admit(repo, place, lfs=endpoint, remote_url=remote_url) else None
    return None


def max_object_size(config: GitConfig) -> int | None:
    """``theta.lfs.maxObjectSize`` in bytes (k, m, g suffixes allowed), or None."""
    return config.integer("theta.lfs.maxObjectSize", minimum=1)


# -- http.<url>.* ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _UrlPattern:
    scheme: str
    user: str | None
    host: str
    port: int | None
    path: str


def _pattern(url: str) -> _UrlPattern | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or parts.hostname is None:
        return None
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return _UrlPattern(
        parts.scheme.lower(),
        parts.username,
        parts.hostname.lower(),
        port or default,
        parts.path.rstrip("/"),
    )


def _specificity(pattern: _UrlPattern, url: _UrlPattern) -> tuple[int, int, int] | None:
    """How closely a config URL matches ``url`` (git's urlmatch rules), or None if not at all."""
    if pattern.scheme != url.scheme or pattern.port != url.port:
        return None
    if pattern.user is not None and pattern.user != url.user:
        return None
    wanted, got = pattern.host.split("."), url.host.split(".")
    if len(wanted) != len(got) or any(w not in ("*", g) for w, g in zip(wanted, got, strict=True)):
        return None
    if pattern.path and not (url.path == pattern.path or url.path.startswith(pattern.path + "/")):
        return None
    exact_labels = sum(w != "*" for w in wanted)
    return exact_labels, len(pattern.path), int(pattern.user is not None)


def _extra_headers(config: GitConfig, url: str) -> tuple[tuple[str, str], ...]:
    """``http.extraHeader`` values for ``url``, collected as git does: entries in file
    order, each kept unless a more specific match came before it; an empty one resets."""
    target = _pattern(url)
    if target is None:
        return ()
    best: tuple[int, int, int] = (-1, -1, -1)
    values: list[str] = []
    for key, value in config.entries:
        if not (key.startswith("http.") and key.endswith(".extraheader")):
            continue
        inner = key[len("http.") : -len(".extraheader")]
        if inner:
            pattern = _pattern(inner)
            match = _specificity(pattern, target) if pattern is not None else None
        else:
            match = (0, -1, 0)
        if match is None or match < best:
            continue
        best = match
        if value == "":
            values = []
        else:
            values.append(value)
    headers = []
    for value in values:
        name, sep, content = value.partition(":")
        if sep and name.strip():
            headers.append((name.strip(), content.strip()))
    return tuple(headers)


def _url_setting(repo: GitRepo, key: str, url: str, *, bool_type: bool = False) -> str | None:
    if bool_type:
        value = repo.git("config", "--bool", "--get-urlmatch", operands=[key, url], check=False)
    else:
        value = repo.git("config", "--get-urlmatch", operands=[key, url], check=False)
    return value.strip() or None


def http_options_for(repo: GitRepo, config: GitConfig) -> Callable[[str], HttpOptions]:
    """``url -> HttpOptions``, from git's http.* settings, remembered per origin."""
    from .store.lfs import HttpOptions

    cache: dict[tuple[str, str, int | None], HttpOptions] = {}
    lock = threading.Lock()

    def options(url: str) -> HttpOptions:
        target = _pattern(url)
        key = (target.scheme, target.host, target.port) if target else ("", url, None)
        with lock:
            if key in cache:
                return cache[key]
        verify: bool | str = True
        if (
            os.environ.get("GIT_SSL_NO_VERIFY")
            or _url_setting(repo, "http.sslverify", url, bool_type=True) == "false"
        ):
            verify = False
        else:
            cainfo = os.environ.get("GIT_SSL_CAINFO") or _url_setting(repo, "http.sslcainfo", url)
            if cainfo:
                verify = os.path.expanduser(cainfo)
        result = HttpOptions(extra_headers=_extra_headers(config, url), verify=verify)
        with lock:
            cache[key] = result
        return result

    return options


# -- opening -----------------------------------------------------------------------------------
def open_lfs_store(
    repo: GitRepo, endpoint: LfsEndpoint, config: GitConfig | None = None
) -> LfsStore:
    """An :class:`~store.lfs.LfsStore` for ``endpoint`` with this repository's settings."""
    from .store.lfs import LfsSettings, LfsStore
    from .store.lfs_ssh import SshAuthenticator

    config = config or GitConfig(repo)
    settings = LfsSettings(
        max_retries=_or(config.integer("lfs.transfer.maxretries"), 8),
        max_retry_delay=float(_or(config.integer("lfs.transfer.maxretrydelay"), 10)),
        connect_timeout=float(_or(config.integer("lfs.dialtimeout", minimum=1), 30)),
        activity_timeout=float(_or(config.integer("lfs.activitytimeout", minimum=1), 60)),
        max_object_size=max_object_size(config),
        connections=_or(config.integer("lfs.concurrenttransfers", minimum=1), 8),
    )
    ssh = None
    if endpoint.ssh is not None:
        command = os.environ.get("GIT_SSH_COMMAND") or None
        program = os.environ.get("GIT_SSH") or None
        if command is None and program is None:
            command = config.get("core.sshCommand") or None
        ssh = SshAuthenticator(
            endpoint.ssh,
            endpoint.store_url,
            ssh_command=command,
            ssh_program=program,
            variant=os.environ.get("GIT_SSH_VARIANT") or config.get("ssh.variant") or None,
        )
    store = LfsStore(
        endpoint,
        settings=settings,
        credentials=GitCredentials(repo.cwd),
        http_options=http_options_for(repo, config),
        ssh=ssh,
    )
    if config.get("lfs.concurrenttransfers") is not None:
        store.preferred_workers = settings.connections
    return store


def _or(value: int | None, default: int) -> int:
    return default if value is None else value
