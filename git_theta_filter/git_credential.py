"""Credentials through git's own helpers: ``git credential fill``, ``approve`` and ``reject``.

Git's contract (git-credential(1)): the description goes to stdin as
``key=value`` lines ended by a blank line::

    protocol=https
    host=git.example.com:8443
    path=org/repo.git/info/lfs

``fill`` prints the same attributes back with ``username`` and ``password``
added (asking a helper, or the user on the terminal). ``approve`` stores a
credential that worked, ``reject`` erases one that did not; both get back
everything ``fill`` printed. Git drops ``path`` unless ``credential.useHttpPath``
is set, so a credential is per host by default, as for git itself.

A credential never reaches a message, a log or a ``repr``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .gitrepo import git_process
from .store.base import StoreUnavailableError
from .store.lfs_protocol import Credential, printable, redact_url

__all__ = ["CredentialError", "GitCredentials", "credential_description"]

_FORBIDDEN = ("\n", "\r", "\0")


class CredentialError(StoreUnavailableError):
    """git could not supply a credential for a URL (no helper and no terminal, or refused)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, f"no credentials: {reason}")


def credential_description(url: str) -> list[tuple[str, str]]:
    """The attributes git credential gets for ``url`` (protocol, host with port, path,
    and the URL's user name if it has one)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"credentials are only asked for http(s) URLs, not {redact_url(url)}")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    attributes = [("protocol", parts.scheme), ("host", host)]
    if parts.path.strip("/"):
        attributes.append(("path", unquote(parts.path).lstrip("/")))
    if parts.username:
        attributes.append(("username", unquote(parts.username)))
    for _, value in attributes:
        # git refuses these too; a newline would let a URL inject attributes (CVE-2020-5260),
        # and a carriage return too, to a helper that reads lines as text (CVE-2024-52006).
        if any(bad in value for bad in _FORBIDDEN):
            raise ValueError(f"{redact_url(url)} has a line break in it")
    return attributes


def _encode(attributes: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> bytes:
    return "".join(f"{key}={value}\n" for key, value in attributes).encode("utf-8") + b"\n"


class GitCredentials:
    """Runs ``git credential`` in ``cwd`` (so the repository's own helpers apply)."""

    def __init__(self, cwd: Path, env: Mapping[str, str] | None = None) -> None:
        self._cwd = cwd
        self._env = dict(os.environ if env is None else env)

    def fill(self, url: str) -> Credential:
        """A user name and password for ``url``, from a helper or the user."""
        try:
            description = credential_description(url)
        except ValueError as exc:
            raise CredentialError(redact_url(url), str(exc)) from None
        result = git_process(
            ["credential", "fill"], cwd=self._cwd, input=_encode(description), env=self._env
        )
        if result.returncode != 0:
            # git's own message, e.g. "terminal prompts disabled"; it holds no secret.
            lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
            reason = printable(lines[-1] if lines else f"exit code {result.returncode}")
            raise CredentialError(redact_url(url), f"`git credential fill` failed: {reason}")
        attributes = []
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                attributes.append((key, value))
        credential = Credential(tuple(attributes))
        if not credential.password:
            raise CredentialError(redact_url(url), "`git credential fill` gave no password")
        return credential

    def approve(self, credential: Credential) -> None:
        """Tell git's helpers that ``credential`` worked, so they keep it."""
        data = _encode(credential.attributes)
        git_process(["credential", "approve"], cwd=self._cwd, input=data, env=self._env)

    def reject(self, credential: Credential) -> None:
        """Tell git's helpers that ``credential`` was refused, so they forget it."""
        data = _encode(credential.attributes)
        git_process(["credential", "reject"], cwd=self._cwd, input=data, env=self._env)
