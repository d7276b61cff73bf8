"""Clean: a model file's bytes in, a manifest out, tensors into the store.

The format is detected from the content, never from the file name:

* a manifest passes through unchanged, so clean(clean(x)) == clean(x);
* ``PK\\x03\\x04`` is tried as a torch zip;
* a plausible safetensors header is tried as safetensors;
* anything else, or any file whose structure turns out to be broken part way
  through, is stored as one opaque object with a warning
  (``formats/opaque.py``). Nothing is lost:
  the bytes consumed so far are rebuilt from the skeleton and the objects
  already written, and the rest of the input follows them.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from .formats.base import CleanContext, NotThisFormat, ParsedFile
from .formats.layout import SkeletonTooLargeError
from .formats.opaque import store_opaque
from .formats.safetensors_file import looks_like_safetensors, parse_safetensors
from .formats.source import Readable, Source, TruncatedError
from .formats.torch_zip import ZIP_MAGIC, parse_torch_zip
from .manifest import MAGIC, MAX_MANIFEST_BYTES, Manifest, ManifestError, looks_like_manifest
from .store.local import LocalStore

__all__ = ["clean", "Warn", "expecting_previous"]

Warn = Callable[[str], None]


def expecting_previous(
    store: LocalStore, previous: Manifest | None
) -> AbstractContextManager[None]:
    """Within the block, clean compares each payload with its version in ``previous``
    (the staged manifest of the same path) and deltas against it: the object of the
    tensor of the same name, else the next of the same header in file order
    (:meth:`LocalStore.expecting`)."""
    if previous is None:
        return store.expecting(())
    return store.expecting(
        [splice.oid for splice in previous.splices],
        {tensor.name: tensor.oid for tensor in previous.tensors},
    )


def _stderr_warning(message: str) -> None:
    print(f"git-theta: warning: {message}", file=sys.stderr, flush=True)


def clean(
    raw: Readable, store: LocalStore, path: str = "<stdin>", warn: Warn = _stderr_warning
) -> bytes:
    """Store the content read from ``raw`` and return its manifest bytes.

    A write into the store that the disk refuses (full, say) is named as
    such. Each writer has already discarded its partial object, and git,
    getting no manifest, leaves the index as it was.
    """
    # Small objects go into one pack per file, in place before the manifest is returned.
    with store.writes(path), store.packing():
        return _clean(raw, store, path, warn)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block, if it was on.

    A file of thousands of small tensors makes a few hundred thousand objects that
    live until its manifest is written; the collections their allocation set off
    went over them again and again (40 ms of a clean of 6,000 tensors). What the
    block leaves in cycles is collected after it. The collector is the whole
    process's: the filter, which does nothing else meanwhile, cleans inside this
    block; :func:`clean` itself does not, since the Python API cleans inside a
    training process whose other threads need their collections.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _clean(raw: Readable, store: LocalStore, path: str, warn: Warn) -> bytes:
    source = Source(raw)
    ctx = CleanContext(source, store)
    # Long enough for every magic; the manifest's (19 bytes) is the longest, and a
    # shorter peek would never recognise a manifest, breaking clean(clean(x)) == clean(x).
    head = source.peek(max(len(MAGIC), 16))
    try:
        if looks_like_manifest(head):
            passthrough = _read_manifest(ctx)
            if passthrough is not None:
                return passthrough
            raise NotThisFormat("looks like a manifest but is not a valid one")
        if head.startswith(ZIP_MAGIC):
            parsed = parse_torch_zip(ctx)
        elif looks_like_safetensors(head):
            parsed = parse_safetensors(ctx)
        else:
            raise NotThisFormat("neither a torch zip archive nor a safetensors file")
        body = _check_manifest(ctx, parsed)
    except (NotThisFormat, TruncatedError, SkeletonTooLargeError) as exc:
        warn(f"{path}: {exc}; stored as one opaque object")
        parsed = store_opaque(ctx)
        body = None
    manifest = _manifest_for(ctx, parsed)
    # The lines after the head are the checked ones: rendered once, not again.
    return manifest.render_head() + (manifest.render_body() if body is None else body)


def _check_manifest(ctx: CleanContext, parsed: ParsedFile) -> bytes:
    """The body of the manifest for ``parsed`` (:meth:`Manifest.render_body`), once it is
    known to be one that readers accept; NotThisFormat otherwise.

    Clean must never write a manifest that smudge then refuses: one over the
    size limit (a pickle with a million metrics) or over the work limit (a
    small storage viewed as 2**40 elements, a tensor spliced thousands of
    times). Such a file is stored opaque instead, whose manifest always is.
    Only the skeleton's id is not known yet; any id gives the same checks.
    """
    ctx.source.finish()  # the whole input has been read; this gives its size
    candidate = Manifest(
        format=parsed.format,
        size=ctx.source.position,
        sha256="0" * 64,
        skeleton="0" * 64,
        metrics=parsed.metrics,
        tensors=parsed.tensors,
        splices=ctx.layout.splices,
    )
    body = candidate.render_body()
    try:
        Manifest.parse(candidate.render_head() + body)
    except ManifestError as exc:
        raise NotThisFormat(f"its manifest would be refused ({exc})") from None
    return body


def _read_manifest(ctx: CleanContext) -> bytes | None:
    """The whole input, if it is a valid manifest; otherwise None (bytes stay in the skeleton)."""
    ctx.source.copy_to(ctx.layout.add_skeleton, MAX_MANIFEST_BYTES + 1, allow_short=True)
    data = bytes(ctx.layout.skeleton)
    if len(data) > MAX_MANIFEST_BYTES:
        return None
    try:
        Manifest.parse(data)
    except ManifestError:
        return None
    return data


def _manifest_for(ctx: CleanContext, parsed: ParsedFile) -> Manifest:
    size, sha256 = ctx.source.finish()
    skeleton_oid = ctx.store.write_bytes(ctx.layout.skeleton)
    return Manifest(
        format=parsed.format,
        size=size,
        sha256=sha256,
        skeleton=skeleton_oid,
        metrics=parsed.metrics,
        tensors=parsed.tensors,
        splices=ctx.layout.splices,
    )
