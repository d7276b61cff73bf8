"""Helpers shared by the test suite: deterministic checkpoints, manifests and store checks.

Every assertion helper fails with the concrete values it compared (and, for
git, the command's stderr), so a failing test says what went wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from git_theta_filter.manifest import Manifest

__all__ = [
    "sha256_bytes",
    "sha256_file",
    "mlp",
    "mlp_checkpoint",
    "save",
    "object_path",
    "store_oids",
    "read_manifest",
    "index_manifest",
    "assert_manifest",
    "assert_object",
    "assert_all_objects_valid",
    "object_payload",
    "storage_bytes",
    "tensor_bytes",
    "status_lines",
    "assert_status_clean",
    "commit_all",
    "bump_mtime",
    "isolated_git_env",
    "tracked_repo",
    "copy_repo",
]

# safetensors' names for torch dtypes, as the manifest writes them.
TORCH_TO_MANIFEST = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# -- checkpoints ---------------------------------------------------------------


def mlp(seed: int = 0, sizes: tuple[int, ...] = (16, 32, 8)) -> torch.nn.Sequential:
    """A small MLP whose weights depend only on ``seed``: Linear, ReLU, Linear, ..."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        if i:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(fan_in, fan_out))
    return torch.nn.Sequential(*layers)


def mlp_checkpoint(seed: int = 0, sizes: tuple[int, ...] = (16, 32, 8)) -> dict[str, torch.Tensor]:
    """The state_dict of :func:`mlp`, detached (plain tensors, deterministic)."""
    return {k: v.detach().clone() for k, v in mlp(seed, sizes).state_dict().items()}


def save(obj: Any, path: Path, **kwargs: Any) -> str:
    """torch.save ``obj`` to ``path``; returns the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, **kwargs)
    return sha256_file(path)


# -- the store ----------------------------------------------------------------


def object_path(repo: Path, oid: str) -> Path:
    """Where docs/store.md puts an object: ``.git/theta/objects/aa/bb/<oid>``."""
    return repo / ".git" / "theta" / "objects" / oid[:2] / oid[2:4] / oid


def store_oids(repo: Path) -> set[str]:
    """Every object file in the repository's store; fails on a file outside the layout."""
    root = repo / ".git" / "theta" / "objects"
    if not root.exists():
        return set()
    oids = set()
    for path in root.rglob("*"):
        if path.is_dir():
            continue
        rel = path.relative_to(root).parts
        assert len(rel) == 3 and rel[0] == rel[2][:2] and rel[1] == rel[2][2:4], (
            f"object outside the aa/bb/<oid> layout: {path}"
        )
        oids.add(rel[2])
    return oids


def object_payload(path: Path) -> tuple[dict, bytes]:
    """The safetensors header entry and the payload bytes of an object file."""
    data = path.read_bytes()
    (length,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8 : 8 + length])
    return header["tensor"], data[8 + length :]


def storage_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of the whole storage behind ``tensor`` (what torch.save writes)."""
    flat = torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage())
    return flat.numpy().tobytes()


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of ``tensor``'s elements in row-major order."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_object(
    repo: Path,
    oid: str,
    *,
    dtype: str | None = None,
    shape: tuple[int, ...] | list[int] | None = None,
    tensor: torch.Tensor | None = None,
    payload: bytes | None = None,
) -> tuple[str, list[int], bytes]:
    """Check an object against docs/store.md and, when given, the tensor it must hold.

    The object must exist at its path, be read-only, hash to its name and be a
    safetensors file that ``safe_open`` reads with exactly one tensor. With
    ``tensor``, the object's dtype, shape and values must be the tensor's
    (bf16 is compared bit for bit, as numpy has no bfloat16).
    """
    path = object_path(repo, oid)
    assert path.is_file(), f"object {oid} is not in the store at {path}"
    assert sha256_file(path) == oid, f"object {oid} hashes to {sha256_file(path)}"
    assert path.stat().st_mode & 0o222 == 0, (
        f"object {oid} has write bits: {oct(path.stat().st_mode)}"
    )
    with safe_open(str(path), framework="numpy") as f:
        keys = list(f.keys())
        assert keys == ["tensor"], f"object {oid} holds {keys}"
        view = f.get_slice("tensor")
        got_dtype, got_shape = view.get_dtype(), list(view.get_shape())
        values = f.get_tensor("tensor") if got_dtype != "BF16" else None
    _, got_payload = object_payload(path)
    if tensor is not None:
        dtype = dtype or TORCH_TO_MANIFEST[tensor.dtype]
        shape = tuple(tensor.shape) if shape is None else shape
        if values is not None:
            expected = tensor.detach().numpy()
            assert values.dtype == expected.dtype, (
                f"object {oid}: numpy dtype {values.dtype}, tensor {expected.dtype}"
            )
            assert np.array_equal(values, expected, equal_nan=values.dtype.kind == "f"), (
                f"object {oid}: values differ"
            )
        payload = tensor_bytes(tensor) if payload is None else payload
    if dtype is not None:
        assert got_dtype == dtype, f"object {oid}: dtype {got_dtype}, expected {dtype}"
    if shape is not None:
        assert got_shape == list(shape), f"object {oid}: shape {got_shape}, expected {list(shape)}"
    if payload is not None:
        assert got_payload == payload, (
            f"object {oid}: payload of {len(got_payload)} bytes differs from the "
            f"expected {len(payload)}"
        )
    return got_dtype, got_shape, got_payload


def assert_all_objects_valid(repo: Path) -> set[str]:
    """Every object in the store is a valid single-tensor safetensors file named by its sha256."""
    oids = store_oids(repo)
    assert oids, "the store is empty"
    for oid in oids:
        assert_object(repo, oid)
    return oids


# -- git ----------------------------------------------------------------------


def read_manifest(git_env: Any, repo: Path, spec: str) -> Manifest:
    """Parse the blob at ``spec`` (``HEAD:model.pth``, ``:model.pth``) as a manifest."""
    data = git_env.run("git", "cat-file", "blob", spec, cwd=repo).stdout
    assert data.startswith(b"git-theta-manifest "), f"{spec} is not a manifest: {data[:80]!r}"
    return Manifest.parse(data)


def index_manifest(git_env: Any, repo: Path, path: str) -> Manifest:
    return read_manifest(git_env, repo, f":{path}")


def assert_manifest(
    manifest: Manifest | bytes,
    *,
    format: str | None = None,
    file: Path | bytes | None = None,
    tensors: Mapping[str, tuple[str, tuple[int, ...]]] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Manifest:
    """Check a manifest's format, its size and sha256 against ``file``, and its tensors.

    ``tensors`` maps every expected name to ``(dtype, shape)``; no other
    tensor may be listed. ``metrics`` entries must be present with equal values
    (other metrics may exist).
    """
    if isinstance(manifest, bytes):
        manifest = Manifest.parse(manifest)
    if format is not None:
        assert manifest.format == format, f"format {manifest.format}, expected {format}"
    if file is not None:
        data = file if isinstance(file, bytes) else file.read_bytes()
        assert manifest.size == len(data), (
            f"manifest size {manifest.size}, file has {len(data)} bytes"
        )
        assert manifest.sha256 == sha256_bytes(data), "manifest sha256 differs from the file's"
    if tensors is not None:
        got = {t.name: (t.dtype, t.shape) for t in manifest.tensors}
        want = {name: (dtype, tuple(shape)) for name, (dtype, shape) in tensors.items()}
        assert got == want, f"tensors differ:\n  got  {got}\n  want {want}"
    if metrics is not None:
        for name, value in metrics.items():
            assert name in manifest.metrics, (
                f"metric {name!r} missing; have {sorted(manifest.metrics)}"
            )
            got_value = manifest.metrics[name]
            assert type(got_value) is type(value) and got_value == value, (
                f"metric {name!r} is {got_value!r}, expected {value!r}"
            )
    return manifest


def status_lines(git_env: Any, repo: Path) -> list[str]:
    out = git_env.git(repo, "status", "--porcelain", "--untracked-files=no")
    return out.splitlines()


def assert_status_clean(git_env: Any, repo: Path) -> None:
    lines = status_lines(git_env, repo)
    assert lines == [], f"git status is not clean: {lines}"


def commit_all(git_env: Any, repo: Path, *paths: str, message: str = "commit") -> str:
    """``git add`` the paths (must succeed), commit, and return the new commit id."""
    git_env.git(repo, "add", *paths)
    git_env.git(repo, "commit", "-q", "-m", message)
    return git_env.git(repo, "rev-parse", "HEAD").strip()


def bump_mtime(path: Path, seconds: float = 10.0) -> None:
    """Move a file's mtime so that git must re-read (and re-clean) it."""
    stat = path.stat()
    os.utime(path, (stat.st_atime + seconds, stat.st_mtime + seconds))


# -- module-scoped repositories ------------------------------------------------------


def isolated_git_env(root: Path) -> Any:
    """The environment of conftest's ``git_env`` fixture, under ``root``,
    for module-scoped fixtures.

    Building a history once per module and copying it per test keeps the
    suite fast; every git and filter process still runs isolated from the
    real ~/.gitconfig.
    """
    from conftest import isolated_git_env as make_env

    return make_env(root / "home")


def tracked_repo(
    git_env: Any,
    path: Path,
    patterns: tuple[str, ...] = ("*.pth", "*.pt", "*.safetensors", "*.bin"),
) -> Path:
    """Like conftest's ``repo`` fixture: a new repository tracking ``patterns``, committed."""
    git_env.run("git", "init", "-q", str(path))
    git_env.theta(path, "track", *patterns)
    git_env.git(path, "add", ".gitattributes")
    git_env.git(path, "commit", "-qm", "track models")
    return path


def copy_repo(template: Path, dest: Path) -> Path:
    """An independent copy of a repository, store included (git clone would not copy .git/theta)."""
    shutil.copytree(template, dest, symlinks=True)
    return dest
