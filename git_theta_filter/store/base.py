"""The interface of an object store other than this repository's own, and its errors.

Every store holds objects under the names of the local store (``docs/store.md``):
``aa/bb/<oid>`` below its root, the oid being the sha256 of the object's bytes.
A store is reached through :class:`ObjectStore`, the one interface that the
transfer code knows: ``has``/``batch_has``, ``get`` (streamed into an
:class:`~.sink.ObjectSink`, which cuts off bytes past the object's size),
``put`` (streamed from a file) and ``list``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import ThetaError

if TYPE_CHECKING:
    from .sink import ObjectSink

__all__ = [
    "ObjectStore",
    "StoreError",
    "StoreUnavailableError",
    "RemoteObjectMissingError",
    "UnsupportedStoreURLError",
]


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
        super().__init__(
            url,
            "has an unsupported URL; use a path, file://, s3://bucket/prefix "
            "or lfs+https://host/org/repo.git/info/lfs",
        )


class ObjectStore(ABC):
    """Where objects are shared. Implementations must be safe to call from several threads."""

    url: str
    # Whether list() works; a Git LFS server has no listing, so callers ask batch_has instead.
    supports_listing: bool = True
    # How many objects this store moves at once when its own settings say so
    # (lfs.concurrenttransfers); None leaves it to theta.transfers.
    preferred_workers: int | None = None
    # The largest object the store accepts, in bytes (theta.lfs.maxObjectSize); None: no limit.
    max_object_size: int | None = None
    # What mends an object of this store that does not hash to its id.
    corrupt_hint: str = (
        "replace it from a clone with a good copy: delete it from the store, "
        "then `git theta push --all` there"
    )

    def prepare(
        self, operation: Literal["upload", "download"], sizes: Mapping[str, Sequence[int]]
    ) -> None:
        """Announce objects about to move: oid -> the sizes in bytes it may have, most likely
        first (exact for uploads). A store whose protocol needs sizes, or batches its
        requests (Git LFS), uses this; the others need not."""
        return None  # the directory and S3 stores need neither sizes nor batches

    @abstractmethod
    def has(self, oid: str) -> bool:
        """Whether the store holds ``oid``."""

    def batch_has(self, oids: Iterable[str]) -> set[str]:
        """The subset of ``oids`` the store holds."""
        return {oid for oid in oids if self.has(oid)}

    @abstractmethod
    def get(self, oid: str, sink: ObjectSink) -> None:
        """Write the object's bytes, in order, into ``sink``; unverified.

        Every byte goes through ``sink.write``, which refuses bytes past the
        object's size; a store that starts again from the first byte calls
        ``sink.restart()`` first. Raises :class:`RemoteObjectMissingError` when
        the store lacks the object.
        """

    @abstractmethod
    def put(self, oid: str, source: Path) -> bool:
        """Store the file ``source`` as ``oid``, never replacing an existing object.

        Returns False when the object was already there.
        """

    @abstractmethod
    def list(self) -> Iterator[str]:
        """Every object id in the store."""
