"""Git objects that a partial clone left on its promisor remote, fetched when history needs them.

A partial clone (``git clone --filter=blob:none``, ``--filter=tree:0`` …) has
commits whose trees or blobs are not local; git fetches each one from the
*promisor* remote the first time git itself reads it. pygit2 (libgit2) knows
nothing of this: to it such an object is simply absent. A reader of history
that took an absent blob for "not a manifest" would silently skip versions of
a model (and ``gc`` could then prune their tensors), so readers ask for what
they need here first.

:func:`fetch_missing` does what git's own lazy fetch does, for many objects at
once: ``git -c fetch.negotiationAlgorithm=noop fetch <remote> --no-tags
--no-write-fetch-head --recurse-submodules=no --filter=blob:none --stdin``
with the object ids on standard input, trying each promisor remote in turn
(``extensions.partialClone`` first, then every ``remote.<name>.promisor``). A
tree comes with every tree below it (but no blobs). Objects that no promisor
remote provides raise :class:`GitObjectsUnavailableError`; libgit2 finds the
new pack by itself on the next lookup.
"""

from __future__ import annotations

from collections.abc import Iterable

import pygit2

from .errors import ThetaError
from .gitrepo import git_process

__all__ = ["GitObjectsUnavailableError", "missing_objects", "promisor_remotes", "fetch_missing"]


class GitObjectsUnavailableError(ThetaError):
    """Git objects that history needs are neither local nor fetchable."""

    exit_code = 128

    def __init__(self, oids: list[str], reason: str, hint: str) -> None:
        more = f" and {len(oids) - 1} more" if len(oids) > 1 else ""
        super().__init__(f"git object {oids[0]}{more} is not in this clone: {reason}", hint=hint)
        self.oids = oids
        self.reason = reason


def missing_objects(git: pygit2.Repository, oids: Iterable[pygit2.Oid]) -> list[pygit2.Oid]:
    """The ``oids`` that the object database does not hold, without duplicates, in order."""
    return [oid for oid in dict.fromkeys(oids) if oid not in git.odb]


def promisor_remotes(git: pygit2.Repository) -> list[str]:
    """The remotes that promised the objects a partial clone left out, preferred one first."""
    remotes: list[str] = []
    config = git.config
    preferred = config["extensions.partialclone"] if "extensions.partialclone" in config else None
    if preferred:
        remotes.append(preferred)
    for entry in config:
        name = entry.name
        if name.startswith("remote.") and name.endswith(".promisor"):
            remote = name[len("remote.") : -len(".promisor")]
            if config.get_bool(name) and remote not in remotes:
                remotes.append(remote)
    return remotes


def fetch_missing(git: pygit2.Repository, oids: Iterable[pygit2.Oid]) -> int:
    """Make every one of ``oids`` local, fetching the absent ones in one batch per
    promisor remote; how many were fetched.

    Raises :class:`GitObjectsUnavailableError` for what stays absent.
    """
    wanted = missing_objects(git, oids)
    if not wanted:
        return 0
    count = len(wanted)
    remotes = promisor_remotes(git)
    if not remotes:
        raise GitObjectsUnavailableError(
            [str(oid) for oid in wanted],
            "the repository lacks it and is not a partial clone",
            hint="run `git fsck` to see what is damaged, then fetch or restore the objects",
        )
    failures = []
    for remote in remotes:
        result = git_process(
            [
                f"--git-dir={git.path}",
                "-c",
                "fetch.negotiationAlgorithm=noop",
                "fetch",
                "--no-tags",
                "--no-write-fetch-head",
                "--recurse-submodules=no",
                "--filter=blob:none",
                "--stdin",
            ],
            revisions=[remote],
            input="".join(f"{oid}\n" for oid in wanted).encode(),
        )
        if result.returncode != 0:
            # git's first fatal line says why; the lines after it are generic advice.
            lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
            fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
            failures.append(f"{remote}: {(fatal or lines or ['fetch failed'])[0]}")
        wanted = missing_objects(git, wanted)
        if not wanted:
            return count
    names = ", ".join(repr(remote) for remote in remotes)
    raise GitObjectsUnavailableError(
        [str(oid) for oid in wanted],
        f"this partial clone could not fetch it from {names}"
        + (f" ({'; '.join(failures)})" if failures else ""),
        hint=f"check that {names} can be reached, then run the command again",
    )
