"""A smudge holds a bounded number of payload bytes in memory, however well they compress.

Small pack entries are put together on worker threads in runs (formats/layout.py);
a run is bounded by the payload bytes it makes, not by the stored bytes it reads:
a megabyte of zeros is stored in some tens of bytes, so a fetched pack of such
objects would otherwise be joined into one buffer the size of the whole file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from helpers import local_store, read_manifest

from git_theta_filter.formats import layout
from git_theta_filter.smudge import prepare_smudge

ELEMENTS = 1 << 18  # a megabyte of F32
COUNT = 40


def constant_tensors_safetensors(count: int) -> bytes:
    header: dict[str, object] = {}
    data = bytearray()
    for index in range(count):
        payload = struct.pack("<f", float(index + 1)) * ELEMENTS
        header[f"t{index:02}"] = {
            "dtype": "F32",
            "shape": [ELEMENTS],
            "data_offsets": [len(data), len(data) + len(payload)],
        }
        data += payload
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + bytes(data)


def test_a_smudge_of_highly_compressed_objects_writes_runs_of_bounded_size(
    git_env, repo: Path
) -> None:
    data = constant_tensors_safetensors(COUNT)
    (repo / "model.safetensors").write_bytes(data)
    git_env.git(repo, "add", "model.safetensors")
    git_env.git(repo, "commit", "-qm", "constant tensors")
    git_env.theta(repo, "repack")  # small loose objects go into a pack
    manifest = read_manifest(git_env, repo, "HEAD:model.safetensors")
    store = local_store(repo)
    plan = prepare_smudge(manifest.render(), store, "model.safetensors")
    # Every payload is a pack entry of a few dozen bytes: all of them are run candidates.
    assert len(plan.opened) == COUNT
    assert all(stored.size < 4096 for stored in plan.opened.values())
    largest = 0
    written = bytearray()

    def write(chunk: memoryview) -> None:
        nonlocal largest
        largest = max(largest, len(chunk))
        written.extend(chunk)

    plan.write(write)
    assert bytes(written) == data
    # One run: at most a batch, plus the one object that passes it, plus header bytes.
    assert largest <= 2 * layout._SMALL_BATCH + ELEMENTS * 4
