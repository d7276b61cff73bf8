"""What every format parser gets and gives back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import ThetaError
from ..manifest import TensorEntry
from ..store.local import LocalStore
from ..store.object_format import object_type_for
from ..store.writing import PACK_BELOW
from .layout import LayoutBuilder
from .source import Source, TruncatedError

__all__ = ["NotThisFormat", "ParsedFile", "CleanContext"]


class NotThisFormat(ThetaError):
    """The bytes do not follow the format the parser expected; the file is stored opaque."""


@dataclass
class ParsedFile:
    format: str
    tensors: list[TensorEntry] = field(default_factory=list)
    metrics: dict[str, int | float | bool] = field(default_factory=dict)


class CleanContext:
    """The source being cleaned, the layout being recorded, and the store objects go to."""

    def __init__(self, source: Source, store: LocalStore) -> None:
        self.source = source
        self.store = store
        self.layout = LayoutBuilder()

    def keep(self, size: int, what: str) -> bytes:
        """Move the next ``size`` bytes into the skeleton and return them."""
        # ``size`` comes from the file (a zip header says up to 2**64): refuse it
        # before reading, or the bytes would pile up in memory first.
        self.layout.check_room(size)
        data = self.source.read(size)
        # Kept even when the file ends early: the opaque fallback rebuilds the
        # file from the layout, so bytes consumed but not kept would be lost.
        self.layout.add_skeleton(data)
        if len(data) != size:
            raise TruncatedError(f"file ends inside {what} at offset {self.source.position}")
        return data

    def store_payload(
        self, dtype: str, shape: tuple[int, ...], nbytes: int, names: Sequence[str] = ()
    ) -> str:
        """Stream the next ``nbytes`` into a new object and splice it into the layout.

        ``names`` are the tensors whose data it is: the store compares it with (and
        deltas it against) their previous version first.
        """
        object_dtype, shape = object_type_for(dtype, shape, nbytes)
        if nbytes < PACK_BELOW and (payload := self.source.take(nbytes)) is not None:
            oid = self.store.write_small(object_dtype, shape, payload)
            if oid is not None:
                self.layout.add_splice(nbytes, oid)
                return oid
            return self._store_with_writer(object_dtype, shape, nbytes, names, payload)
        return self._store_with_writer(object_dtype, shape, nbytes, names)

    def _store_with_writer(
        self,
        dtype: str,
        shape: tuple[int, ...],
        nbytes: int,
        names: Sequence[str],
        taken: memoryview | None = None,
    ) -> str:
        """:meth:`store_payload` through an object writer; ``taken`` is the payload when
        it has already been taken from the source."""
        writer = self.store.writer(dtype, shape, nbytes, names)
        try:
            if taken is not None:
                writer.write(taken)
                received = nbytes
            else:
                received = self.source.copy_to(writer.write_async, nbytes, allow_short=True)
        except BaseException:
            writer.abort()
            raise
        if received < nbytes:
            # The file ends inside this payload. What arrived is kept as an
            # object of its own, so the opaque fallback can rebuild every byte.
            self.layout.add_splice(received, writer.commit_received())
            raise TruncatedError(
                f"file ends {nbytes - received} bytes into a tensor, at offset "
                f"{self.source.position}"
            )
        oid = writer.commit()
        self.layout.add_splice(nbytes, oid)
        return oid
