"""The size of each object file a manifest names, for stores that must know it before a download.

A manifest records each object's *payload* length; the object file is that
payload behind a header (``docs/store.md``) whose length depends on the
object's dtype and shape. The Git LFS batch API asks for the whole object's
size, and servers refuse a wrong one (giftless and Gitea answer 422).

Clean gives an object the tensor's own dtype and shape when one kind of
tensor uses all of it, the storage's dtype as one dimension when views of
different shapes share it, and ``U8`` bytes otherwise (a skeleton, an opaque
file, a dtype safetensors lacks, a big-endian archive). The manifest does not
say which case applied, so this gives every size those rules allow, most
likely first; a store tries the next one when the server refuses a size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from .dtypes import dtype_by_name
from .manifest import Manifest, TensorEntry
from .store.object_format import encode_header

__all__ = ["object_size_candidates"]


def _object_size(dtype: str, shape: tuple[int, ...], payload: int) -> int | None:
    try:
        return len(encode_header(dtype, shape, payload)) + payload
    except (KeyError, ValueError):
        return None  # a dtype safetensors lacks, or a shape that does not fill the payload


def _candidates(payload: int, users: list[TensorEntry]) -> tuple[int, ...]:
    typed: list[tuple[str, tuple[int, ...]]] = []
    if users and all(user.offset is None and user.stride is None for user in users):
        kinds = {(user.dtype, user.shape) for user in users}
        if len(kinds) == 1:
            typed.append(kinds.pop())
    for dtype in dict.fromkeys(user.dtype for user in users):
        itemsize = dtype_by_name(dtype).itemsize
        if itemsize and payload % itemsize == 0:
            typed.append((dtype, (payload // itemsize,)))
    typed.append(("U8", (payload,)))
    sizes = (_object_size(dtype, shape, payload) for dtype, shape in typed)
    return tuple(dict.fromkeys(size for size in sizes if size is not None))


def object_size_candidates(manifests: Iterable[Manifest]) -> dict[str, tuple[int, ...]]:
    """oid -> the sizes its object file may have, most likely first, for every object named."""
    users: dict[str, list[TensorEntry]] = defaultdict(list)
    payloads: dict[str, int] = {}
    for manifest in manifests:
        payloads.update(manifest.payload_lengths())
        for tensor in manifest.tensors:
            users[tensor.oid].append(tensor)
    return {oid: _candidates(payload, users.get(oid, [])) for oid, payload in payloads.items()}
