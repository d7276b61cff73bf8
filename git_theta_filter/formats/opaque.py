"""The opaque format: a whole file as one U8 object spliced over all of it.

Any input that is not a manifest, a torch zip or a safetensors file is stored
this way, and so is a file whose structure turns out to be broken part way
through. Nothing is lost then: the bytes consumed so far are rebuilt from the
layout recorded until then (skeleton and objects already written), and the
rest of the input follows them.
"""

from __future__ import annotations

from .base import CleanContext, ParsedFile
from .layout import write_spliced

__all__ = ["FORMAT", "store_opaque"]

FORMAT = "opaque"


def store_opaque(ctx: CleanContext) -> ParsedFile:
    """Turn everything, consumed or not, into one U8 object spliced over the whole file."""
    layout = ctx.layout
    writer = ctx.store.unsized_writer()
    try:
        write_spliced(layout.skeleton, layout.splices, ctx.store, writer.write)
        ctx.source.copy_rest(writer.write)
    except BaseException:
        writer.abort()
        raise
    oid = writer.commit()
    size = ctx.source.position
    layout.reset()
    if size:
        layout.add_splice(size, oid)
    return ParsedFile(FORMAT)
