"""Malformed checkpoints: each is stored (per tensor or opaque) and checked out byte for byte.

All the files go through one `git add`, so one filter process takes every
case in turn: a file that broke it would fail the files after it too.
"""

from __future__ import annotations

import io
import os
import tracemalloc
from pathlib import Path

import pytest
import torch
from attacks import (
    compressed_entries,
    duplicate_names,
    non_utf8_name,
    overlapping_entries,
    torch_zip_bytes,
    zip64_archive,
    zip_bomb,
)
from helpers import (
    assert_status_clean,
    isolated_git_env,
    mlp_checkpoint,
    read_manifest,
    sha256_bytes,
    sha256_file,
    tracked_repo,
)

import git_theta_filter.formats.layout
from git_theta_filter.clean import clean
from git_theta_filter.manifest import Manifest
from git_theta_filter.smudge import prepare_smudge
from git_theta_filter.store.local import LocalStore

NON_UTF8_PATH = os.fsdecode(b"weights-\xff\xfe.pth")


def checkpoint() -> bytes:
    return torch_zip_bytes({"model": mlp_checkpoint(0, (8, 16, 4)), "epoch": 3, "loss": 0.5})


def cut_points(data: bytes) -> dict[str, int]:
    """Where to cut the checkpoint: in a header, data.pkl, a storage, the central directory,
    the last byte.
    """
    pkl_end = data.index(b"PK\x07\x08")  # data.pkl's data descriptor
    storage = data.index(b"archive/data/0") + 200
    central = data.index(b"PK\x01\x02")
    return {
        "local-header": 10,
        "data-pkl": pkl_end - 20,
        "storage": storage,
        "central-directory": central + 30,
        "last-byte": len(data) - 1,
    }


def make_cases() -> dict[str, tuple[str, bytes, str]]:
    """Case -> (file name, content, the format it must be stored as)."""
    base = checkpoint()
    cases = {f"truncated-{where}": (base[:n], "opaque") for where, n in cut_points(base).items()}
    cases.update(
        {
            "overlapping-entries": (overlapping_entries(base), "opaque"),
            "compressed-entries": (compressed_entries(base), "opaque"),
            # The bomb is a record like any other: never inflated, it stays in the skeleton.
            "zip-bomb": (zip_bomb(base), "torch-zip"),
            "zip64": (zip64_archive(base), "torch-zip"),
            "duplicate-names": (duplicate_names(base), "torch-zip"),
            "non-utf8-entry-name": (non_utf8_name(base, utf8_flag=False), "torch-zip"),
            # zipfile refuses a name flagged UTF-8 that is not; stored whole instead.
            "non-utf8-entry-name-flagged": (non_utf8_name(base, utf8_flag=True), "opaque"),
            "empty-file": (b"", "opaque"),
            "zero-byte-tensor": (
                torch_zip_bytes({"empty": torch.zeros(0), "w": torch.ones(3)}),
                "torch-zip",
            ),
        }
    )
    named = {case: (f"{case}.pth", data, fmt) for case, (data, fmt) in cases.items()}
    named["non-ascii-path"] = ("mödel/ωeights ✓.pth", base, "torch-zip")
    named["non-utf8-path"] = (NON_UTF8_PATH, base, "torch-zip")
    return named


CASES = make_cases()


@pytest.fixture(scope="module")
def checked_out(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """Every case added in one `git add`, committed, deleted and checked out again."""
    root = tmp_path_factory.mktemp("malformed")
    git_env = isolated_git_env(root)
    repo = tracked_repo(git_env, root / "repo")
    for name, data, _ in CASES.values():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    add = git_env.run("git", "add", ".", cwd=repo)
    git_env.git(repo, "commit", "-qm", "malformed")
    manifests = {
        case: read_manifest(git_env, repo, f"HEAD:{name}") for case, (name, _, _) in CASES.items()
    }
    for name, _, _ in CASES.values():
        (repo / name).unlink()
    git_env.git(repo, "checkout", "--", ".")
    return git_env, repo, manifests, add.stderr.decode("utf-8", "replace")


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_checkpoint_is_stored_and_restored_byte_exact(
    checked_out: tuple, case: str
) -> None:
    _, repo, manifests, _ = checked_out
    name, data, expected_format = CASES[case]
    manifest = manifests[case]
    assert manifest.format == expected_format
    assert (manifest.size, manifest.sha256) == (len(data), sha256_bytes(data))
    assert sha256_file(repo / name) == sha256_bytes(data), f"{name}: checked out bytes differ"


def test_malformed_checkpoints_warn_once_per_opaque_file_and_leave_status_clean(
    checked_out: tuple,
) -> None:
    git_env, repo, _, stderr = checked_out
    opaque = sorted(name for name, _, fmt in CASES.values() if fmt == "opaque")
    warned = sorted(
        line.split(": ")[2]
        for line in stderr.splitlines()
        if line.startswith("git-theta: warning: ")
    )
    assert warned == opaque
    assert "error" not in stderr
    assert_status_clean(git_env, repo)


def test_a_zero_byte_tensor_keeps_its_name_and_shape(checked_out: tuple) -> None:
    _, _, manifests, _ = checked_out
    tensors = {t.name: (t.dtype, t.shape) for t in manifests["zero-byte-tensor"].tensors}
    assert tensors == {"empty": ("F32", (0,)), "w": ("F32", (3,))}


class LazyZeros:
    """A reader of ``head`` followed by zeros up to ``size`` bytes, never held in memory."""

    def __init__(self, head: bytes, size: int) -> None:
        self._head = head
        self._size = size
        self._pos = 0

    def readinto(self, buffer: memoryview) -> int:
        count = min(len(buffer), self._size - self._pos)
        head = self._head[self._pos : self._pos + count]
        buffer[: len(head)] = head
        buffer[len(head) : count] = bytes(count - len(head))
        self._pos += count
        return count


def test_a_huge_record_size_in_a_local_header_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored record whose header says 64 MB, past the skeleton limit (1 MB here), must not be
    read into memory first: the file goes opaque with a flat memory profile."""
    monkeypatch.setattr(git_theta_filter.formats.layout, "MAX_SKELETON_BYTES", 1 << 20)
    base = checkpoint()
    # data.pkl and the small records, then a stored record declaring 64 MB.
    second = base.index(b"PK\x03\x04", 4)
    huge = 64 << 20
    header = b"PK\x03\x04" + (20).to_bytes(2, "little") + bytes(4) + bytes(4) + bytes(4)
    header += (
        huge.to_bytes(4, "little") * 2
        + len(b"archive/x").to_bytes(2, "little")
        + bytes(2)
        + b"archive/x"
    )
    head = base[:second] + header
    store = LocalStore(tmp_path / "theta")
    warnings: list[str] = []
    tracemalloc.start()
    try:
        manifest = clean(LazyZeros(head, len(head) + huge), store, "huge.pth", warn=warnings.append)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert Manifest.parse(manifest).format == "opaque"
    assert warnings == [
        "huge.pth: more than 1048576 bytes of non-tensor data; stored as one opaque object"
    ]
    # The streaming clean itself holds 13-16 MB at its peak (its ring of read buffers and
    # the blocks being encoded); reading the 64 MB record first would hold over 64 MB.
    assert peak < 32 << 20, f"clean held {peak >> 20} MB in memory"
    rebuilt = io.BytesIO()
    prepare_smudge(manifest, store, "huge.pth").write(rebuilt.write)
    assert rebuilt.getvalue() == head + bytes(huge)
