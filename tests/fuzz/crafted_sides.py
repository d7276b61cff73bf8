"""Versions of one model file as a commit of someone else's may hold them: the fuzz
targets that read other people's manifests draw their inputs here.

Each version is a real file, cleaned into :data:`STORE`, whose manifest may then
be changed as a crafted commit can change it: a tensor's object swapped for
another one (the same bytes typed otherwise, or another tensor's), a tensor
line's dtype, shape or view changed. A change that leaves the manifest invalid
is dropped: nothing reads such a manifest past its parse, which the manifest's
own target fuzzes.
"""

from __future__ import annotations

import io
import json
import struct

import torch
from attacks import torch_zip_bytes
from fuzz_settings import scratch_dir
from hypothesis import strategies as st

from git_theta_filter.clean import clean
from git_theta_filter.manifest import Manifest, ManifestError
from git_theta_filter.store.local import LocalStore

__all__ = ["PATH", "STORE", "VERSIONS", "crafted"]

STORE = LocalStore(scratch_dir() / "theta")
PATH = "model.pth"


def _safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    header: dict[str, object] = {}
    data = b""
    for name, tensor in tensors.items():
        raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
        dtype = {torch.float32: "F32", torch.int32: "I32", torch.bfloat16: "BF16"}[tensor.dtype]
        header[name] = {
            "dtype": dtype,
            "shape": list(tensor.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body + data


def _versions() -> dict[str, list[Manifest]]:
    """Versions of one file per format: values, dtypes, views and shared storages vary."""
    base = torch.arange(12, dtype=torch.float32)
    shared = base * 3
    torch_zip = [
        {"a": base.clone(), "b": base[2:6]},
        {"a": base + 1, "b": (base + 1)[2:6]},
        {"a": base.clone().view(3, 4), "b": base[2:6]},
        {"a": base.clone().requires_grad_(), "b": torch.ones(4)},
        {"a": base.to(torch.int32), "b": torch.ones(4)},
        {"a": shared, "b": shared[2:6]},
        {"a": shared.view(2, 6), "b": shared[1:5]},
    ]
    safetensors = [
        {"a": base.clone(), "b": torch.ones(4)},
        {"a": base + 1, "b": torch.ones(4)},
        {"a": base.view(3, 4), "b": torch.zeros(4)},
        {"a": base.to(torch.bfloat16), "b": torch.ones(4)},
        {"a": base.to(torch.int32), "b": torch.ones(4)},
    ]
    files = {
        "torch-zip": [torch_zip_bytes(version) for version in torch_zip],
        "safetensors": [_safetensors(version) for version in safetensors],
    }
    return {
        format: [Manifest.parse(clean(io.BytesIO(data), STORE, PATH)) for data in datas]
        for format, datas in files.items()
    }


VERSIONS = _versions()


def _retyped_objects() -> list[str]:
    """Every payload object of every version, and its bytes again as U8, I32, BF16, and
    as F32 of another shape."""
    oids = []
    for versions in VERSIONS.values():
        for manifest in versions:
            for splice in manifest.splices:
                oids.append(splice.oid)
                file, header = STORE.open_object(splice.oid, PATH)
                with file:
                    data = file.read(header.nbytes)
                for dtype, itemsize in (("U8", 1), ("I32", 4), ("BF16", 2)):
                    oids.append(STORE.write_bytes(data, dtype, (len(data) // itemsize,)))
                oids.append(STORE.write_bytes(data, "F32", (1, len(data) // 4)))
    return sorted(set(oids))


OBJECTS = _retyped_objects()


def _changed(manifest: Manifest, change: str, draw: st.DrawFn) -> Manifest:
    manifest = Manifest.parse(manifest.render())
    if change == "object":
        splice_at = draw(st.integers(0, len(manifest.splices) - 1))
        old, new = manifest.splices[splice_at].oid, draw(st.sampled_from(OBJECTS))
        manifest.splices[splice_at] = manifest.splices[splice_at]._replace(oid=new)
        manifest.tensors = [t._replace(oid=new) if t.oid == old else t for t in manifest.tensors]
        return manifest
    at = draw(st.integers(0, len(manifest.tensors) - 1))
    line = manifest.tensors[at]
    if change == "dtype":
        line = line._replace(dtype=draw(st.sampled_from(["F32", "I32", "U8", "BF16"])))
    elif change == "shape":
        line = line._replace(shape=draw(st.sampled_from([(4,), (12,), (3, 4), (2, 2), (16,)])))
    else:
        offset, stride = draw(st.sampled_from([(None, None), (0, (1,)), (2, (1,)), (0, (4, 1))]))
        line = line._replace(offset=offset, stride=stride)
    manifest.tensors[at] = line
    return manifest


@st.composite
def crafted(draw: st.DrawFn, format: str) -> bytes:
    """A version of the file in ``format``, its manifest changed as a commit of someone
    else's may be."""
    manifest = draw(st.sampled_from(VERSIONS[format]))
    for _ in range(draw(st.integers(0, 3))):
        change = draw(st.sampled_from(["object", "object", "dtype", "shape", "view"]))
        changed = _changed(manifest, change, draw)
        try:
            manifest = Manifest.parse(changed.render())
        except ManifestError:
            continue
    return manifest.render()
