"""Helpers shared by the test suite: deterministic checkpoints, manifests and store checks.

Every assertion helper fails with the concrete values it compared (and, for
git, the command's stderr), so a failing test says what went wrong.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import threading
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import deserialize

from git_theta_filter.manifest import Manifest
from git_theta_filter.store.encoded import is_encoded
from git_theta_filter.store.local import LocalStore
from git_theta_filter.store.repack import repack
from git_theta_filter.store.sink import ObjectSink

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


def large_safetensors_bytes(seed: int) -> bytes:
    """A safetensors file just over the 16 MiB the filter reads ahead for its clean cache."""
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    return save({"w": rng.standard_normal((17, 1 << 18)).astype(np.float32)})


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


_NUMPY_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16,
    "U32": np.uint32, "I32": np.int32, "U64": np.uint64, "I64": np.int64,
    "F16": np.float16, "F32": np.float32, "F64": np.float64, "C64": np.complex64,
}  # fmt: skip


def local_store(repo: Path) -> LocalStore:
    """The repository's store (a work tree's, or a bare repository's ``theta/``)."""
    theta = repo / ".git" / "theta"
    return LocalStore(theta if (repo / ".git").exists() else repo / "theta")


def canonical_bytes(repo: Path | LocalStore, oid: str) -> bytes:
    """An object's canonical bytes, decoded from however it is stored (and verified)."""
    store = repo if isinstance(repo, LocalStore) else local_store(repo)
    file, _header = store.open_object(oid)
    with file:
        file.seek(0)
        return file.read()


def fetch_bytes(store: Any, oid: str, path: Path, max_size: int = 1 << 30) -> bytes:
    """``store.get(oid)`` into the file ``path`` (at most ``max_size`` bytes); its bytes."""
    with open(path, "wb", buffering=0) as file:
        store.get(oid, ObjectSink(file, store.url, oid, max_size))
    return path.read_bytes()


def loose_object(store: LocalStore, oid: str) -> Path:
    """The object as a loose canonical file at ``objects/aa/bb/<oid>`` (docs/store.md),
    for tests that delete or damage one object.

    An object stored encoded or in a pack is rewritten there first, and
    dropped from its packs, so that the file is the object's only copy.
    """
    path = store.object_path(oid)
    if path.is_file() and not path.is_symlink():
        with open(path, "rb") as file:
            if not is_encoded(file.read(4)):
                return path
    data = canonical_bytes(store, oid)
    temp = path.with_name(f"{oid}.loosen")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(data)
    temp.chmod(0o444)
    os.replace(temp, path)
    repack(store, keep=lambda other: other != oid, loose=False)
    return path


def object_path(repo: Path, oid: str) -> Path:
    """:func:`loose_object` in the repository's store."""
    return loose_object(local_store(repo), oid)


def remove_local_objects(repo: Path) -> None:
    """Delete every object from the repository's store, loose and packed, as a clone
    that never fetched them would be.
    """
    theta = repo / ".git" / "theta"
    for path in [*theta.joinpath("objects").rglob("*"), *theta.joinpath("packs").rglob("*")]:
        if path.is_file():
            path.chmod(0o644)
            path.unlink()


def store_oids(repo: Path) -> set[str]:
    """Every object in the repository's store, loose or packed; fails on a loose file
    outside the layout.
    """
    root = repo / ".git" / "theta" / "objects"
    for path in root.rglob("*") if root.exists() else []:
        if path.is_dir():
            continue
        rel = path.relative_to(root).parts
        assert len(rel) == 3 and rel[0] == rel[2][:2] and rel[1] == rel[2][2:4], (
            f"object outside the aa/bb/<oid> layout: {path}"
        )
    return set(local_store(repo).iter_oids())


def object_payload(data: bytes) -> tuple[dict, bytes]:
    """The safetensors header entry and the payload bytes of an object's canonical bytes."""
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
    safetensors file with exactly one tensor, however the store encodes it. With
    ``tensor``, the object's dtype, shape and values must be the tensor's
    (bf16 is compared bit for bit, as numpy has no bfloat16).
    """
    store = local_store(repo)
    assert store.has(oid), f"object {oid} is not in the store"
    data = canonical_bytes(repo, oid)
    assert sha256_bytes(data) == oid, f"object {oid} hashes to {sha256_bytes(data)}"
    stored_in = store.object_path(oid)
    if not stored_in.is_file():
        stored_in = next(p for p, index in store.packs().items() if index.find(oid))
    assert stored_in.stat().st_mode & 0o222 == 0, (
        f"object {oid} has write bits: {oct(stored_in.stat().st_mode)}"
    )
    ((key, entry),) = deserialize(data)
    assert key == "tensor", f"object {oid} holds {key!r}"
    got_dtype, got_shape = entry["dtype"], list(entry["shape"])
    values = None
    if got_dtype in _NUMPY_DTYPES:  # numpy has no bfloat16 or float8: compared as bytes
        values = np.frombuffer(bytes(entry["data"]), dtype=_NUMPY_DTYPES[got_dtype])
        values = values.reshape(got_shape)
    _, got_payload = object_payload(data)
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


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()`` on a thread, failing if it has not returned after ``seconds`` (a read
    that blocks on a FIFO, a parse that runs away); it then runs on, detached.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def enter_git_env(monkeypatch: Any, env: Mapping[str, str]) -> None:
    """Make this process's environment ``env`` (a git_env's) for the rest of the test, so
    in-process API calls run git with the isolated HOME and config, never the real one."""
    for key in list(os.environ):
        if key.startswith("GIT_") or key in ("HOME", "XDG_CONFIG_HOME"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def data_pkl(obj: object) -> bytes:
    """The data.pkl record that torch.save writes for ``obj``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with zipfile.ZipFile(buffer) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        return archive.read(name)


def flip_a_raw_plane_byte(store: LocalStore, oid: str, block: int = 0) -> None:
    """Damage a loose encoded object's stored records of one block so that it still
    decodes, to other bytes: a byte of its first raw plane flipped."""
    found = store.open_stored(oid)
    assert found is not None and found.encoded is not None
    with found:
        start, _length = found._block_extent(block)
        width = found.encoded.width
    path = store.object_path(oid)
    data = bytearray(path.read_bytes())
    position = start
    for _plane in range(width):
        mode, length = struct.unpack_from("<BI", data, position)
        if mode == 0:  # raw
            data[position + 5] ^= 1
            break
        position += 5 + length
    else:
        raise AssertionError(f"no raw plane in block {block}")
    path.chmod(0o644)
    path.write_bytes(bytes(data))
