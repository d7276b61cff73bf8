"""Which loose objects exist, from one listing of each fan-out directory.

A checkout or a clean of a file with thousands of small (packed) tensors
looks each one up loose first (docs/store.md, "Packs" rule 4): one failed
``open()`` or ``stat()`` per object. Within one bulk operation the store
answers "is there no loose copy?" from a listing instead, as git's loose
object cache does: ``objects/`` is listed when first needed, ``objects/aa/``
when an id starting ``aa`` is first looked up, ``objects/aa/bb/`` likewise,
so an operation lists each directory at most once, however many lookups
it makes. What a listing may miss, and why that is safe, is in
docs/store.md ("Lookups within one operation").
"""

from __future__ import annotations

import os

__all__ = ["LooseListing"]


class LooseListing:
    """The fan-out directories under ``objects_root``, each listed once, when first needed.

    :meth:`may_hold` is False only when the listing shows no loose file for
    the id; the caller then looks in the packs, and opens the loose path
    after all when no pack has the object either.
    """

    def __init__(self, objects_root: str) -> None:
        self._root = objects_root
        # "" (objects/), "aa" (objects/aa/) or "aabb" (objects/aa/bb/) -> the names in that
        # directory; None when it could not be listed for another reason than its absence.
        self._listed: dict[str, frozenset[str] | None] = {}
        self._linked: set[str] = set()  # loose objects this process put in place since

    def may_hold(self, oid: str) -> bool:
        """False if the listing shows no loose copy of ``oid`` (a valid id). A level that
        could not be listed shows nothing: the next one, or an open, decides."""
        if oid in self._linked:
            return True
        names = self._names_in("")
        if names is not None and oid[0:2] not in names:
            return False
        names = self._names_in(oid[0:2])
        if names is not None and oid[2:4] not in names:
            return False
        names = self._names_in(oid[0:4])
        return names is None or oid in names

    def linked(self, oid: str) -> None:
        """This process just put ``oid``'s loose file in place."""
        self._linked.add(oid)

    def _names_in(self, key: str) -> frozenset[str] | None:
        if key in self._listed:
            return self._listed[key]
        path = "/".join(part for part in (self._root, key[0:2], key[2:4]) if part)
        try:
            names: frozenset[str] | None = frozenset(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            names = frozenset()
        except OSError:  # unreadable, say: as without a listing
            names = None
        self._listed[key] = names
        return names
