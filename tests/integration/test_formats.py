"""Every format and tensor kind of item 3-5: git add succeeds, objects are right,
checkout is byte-exact.

All files are added in one `git add` in a module-scoped template; each test
works on a copy.
"""

from __future__ import annotations

import argparse
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    assert_all_objects_valid,
    assert_manifest,
    assert_object,
    assert_status_clean,
    copy_repo,
    index_manifest,
    isolated_git_env,
    local_store,
    mlp,
    mlp_checkpoint,
    save,
    sha256_file,
    storage_bytes,
    tracked_repo,
)
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

OPAQUE = ("random.bin", "legacy.pth", "script.pt", "truncated.pth", "empty.pth")


def make_files(repo: Path) -> dict[str, object]:
    """Write every case; returns what each file was made from, for the checks."""
    made: dict[str, object] = {}
    torch.manual_seed(0)

    shared = torch.randn(8, 4)
    made["tied.pth"] = {"encoder.weight": shared, "decoder.weight": shared, "bias": torch.zeros(8)}

    made["dtypes.pth"] = {
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "fp16": torch.randn(4, 2).to(torch.float16),
        "f64": torch.randn(3).double(),
        "i64": torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.arange(10, dtype=torch.uint8),
        "bool": torch.tensor([[True, False], [False, True]]),
        "scalar_f32": torch.tensor(3.5),
        "scalar_i64": torch.tensor(7),
        "scalar_bool": torch.tensor(True),
        "scalar_bf16": torch.tensor(-2.0, dtype=torch.bfloat16),
        "complex": torch.randn(2, 3, dtype=torch.complex128),
        "empty": torch.zeros(0, 4),
    }

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    long = torch.randn(100)
    made["views.pth"] = {
        "base": base,
        "rows": base[1:3],
        "cols": base[:, 2:4],
        "t": base.t(),
        "slice": long[10:20],
    }

    model = mlp(0, (8, 16, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(2, 8)).sum().backward()
    optimizer.step()
    made["nested.pth"] = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "global_step": 1200,
        "loss": 0.25,
        "best_accuracy": 0.9375,
        "finished": False,
        "history": {"val_loss": [0.5, 0.4, 0.3]},
        "run_name": "baseline",
        "hparams": argparse.Namespace(lr=0.001, layers=2),
    }

    made["bf16_model.pt"] = {
        k: v.to(torch.bfloat16) for k, v in mlp_checkpoint(1, (8, 16, 4)).items()
    }

    for name, obj in made.items():
        save(obj, repo / name)

    made["torch.safetensors"] = {
        "embedding": torch.randn(16, 4),
        "norm": torch.ones(4, dtype=torch.bfloat16),
        "step": torch.tensor(5),
    }
    save_torch(
        made["torch.safetensors"],
        str(repo / "torch.safetensors"),
        metadata={"format": "pt", "epoch": "3"},
    )
    made["numpy.safetensors"] = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "ids": np.array([1, 2, 3], dtype=np.int32),
    }
    save_numpy(made["numpy.safetensors"], str(repo / "numpy.safetensors"))

    (repo / "random.bin").write_bytes(os.urandom(3000))
    torch.save({"w": torch.randn(4, 4)}, repo / "legacy.pth", _use_new_zipfile_serialization=False)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # torch.jit is deprecated, still written by users
        torch.jit.save(torch.jit.script(mlp(2, (4, 8, 2))), str(repo / "script.pt"))
    whole = (repo / "tied.pth").read_bytes()
    # Cut inside the central directory: the records are complete, the archive is not.
    (repo / "truncated.pth").write_bytes(whole[:-30])
    (repo / "empty.pth").write_bytes(b"")
    return made


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    root = tmp_path_factory.mktemp("formats")
    git_env = isolated_git_env(root)
    repo = tracked_repo(git_env, root / "template")
    made = make_files(repo)
    names = sorted(p.name for p in repo.iterdir() if p.is_file() and p.name != ".gitattributes")
    digests = {name: sha256_file(repo / name) for name in names}
    add = git_env.run("git", "add", *names, cwd=repo)
    git_env.git(repo, "commit", "-qm", "all formats")
    return git_env, repo, made, digests, add.stderr.decode()


@pytest.fixture
def repo_copy(template: tuple, tmp_path: Path) -> tuple:
    git_env, template_repo, made, digests, _ = template
    return git_env, copy_repo(template_repo, tmp_path / "repo"), made, digests


def tensor_oids(manifest) -> dict[str, str]:
    return {t.name: t.oid for t in manifest.tensors}


def test_formats_git_add_warns_once_per_opaque_file_only(template: tuple) -> None:
    stderr = template[4]
    warned = re.findall(
        r"^git-theta: warning: (\S+): .*; stored as one opaque object$", stderr, re.MULTILINE
    )
    assert sorted(warned) == sorted(OPAQUE), stderr
    assert "error" not in stderr


def test_formats_every_file_checks_out_byte_exact(repo_copy: tuple) -> None:
    git_env, repo, made, digests = repo_copy
    assert sorted(digests) == sorted([*made, *OPAQUE])
    for name in digests:
        assert_manifest(index_manifest(git_env, repo, name), file=repo / name)
        (repo / name).unlink()
    git_env.git(repo, "checkout", "--", ".")
    assert {name: sha256_file(repo / name) for name in digests} == digests
    assert_status_clean(git_env, repo)


def test_formats_every_object_is_a_valid_safetensors_file_named_by_its_sha256(
    repo_copy: tuple,
) -> None:
    git_env, repo, _, _ = repo_copy
    oids = assert_all_objects_valid(repo)
    needed = set().union(
        *(index_manifest(git_env, repo, name).object_ids() for name in repo_copy[3])
    )
    assert needed == oids


def test_formats_tied_weights_are_one_object_under_both_names(repo_copy: tuple) -> None:
    git_env, repo, made, _ = repo_copy
    manifest = assert_manifest(
        index_manifest(git_env, repo, "tied.pth"),
        format="torch-zip",
        tensors={
            "encoder.weight": ("F32", (8, 4)),
            "decoder.weight": ("F32", (8, 4)),
            "bias": ("F32", (8,)),
        },
    )
    oids = tensor_oids(manifest)
    assert oids["encoder.weight"] == oids["decoder.weight"] != oids["bias"]
    assert len(manifest.splices) == 2
    assert all(t.stride is None for t in manifest.tensors)
    assert_object(repo, oids["encoder.weight"], tensor=made["tied.pth"]["encoder.weight"])
    assert_object(repo, oids["bias"], tensor=made["tied.pth"]["bias"])


def test_formats_dtypes_and_0d_tensors_keep_their_type_and_values(repo_copy: tuple) -> None:
    git_env, repo, made, _ = repo_copy
    tensors = made["dtypes.pth"]
    expected_types = {
        "bf16": "BF16", "fp16": "F16", "f64": "F64", "i64": "I64",
        "i8": "I8", "u8": "U8", "bool": "BOOL",
        "scalar_f32": "F32", "scalar_i64": "I64", "scalar_bool": "BOOL", "scalar_bf16": "BF16",
        "complex": "C128", "empty": "F32",
    }  # fmt: skip
    manifest = assert_manifest(
        index_manifest(git_env, repo, "dtypes.pth"),
        format="torch-zip",
        tensors={name: (expected_types[name], tuple(t.shape)) for name, t in tensors.items()},
    )
    oids = tensor_oids(manifest)
    for name, tensor in tensors.items():
        if name == "complex":
            # safetensors has no complex128: the object is its bytes as U8, the manifest keeps C128.
            assert_object(
                repo,
                oids[name],
                dtype="U8",
                shape=(tensor.numel() * 16,),
                payload=storage_bytes(tensor),
            )
        else:
            assert_object(repo, oids[name], tensor=tensor)
    assert [t.shape for t in manifest.tensors if t.name.startswith("scalar_")] == [(), (), (), ()]


def test_formats_views_record_offset_and_stride_over_their_storage(repo_copy: tuple) -> None:
    git_env, repo, made, _ = repo_copy
    views = made["views.pth"]
    manifest = index_manifest(git_env, repo, "views.pth")
    entries = {t.name: t for t in manifest.tensors}
    # The whole storage in order needs no offset/stride, even when views share it.
    assert (entries["base"].offset, entries["base"].stride) == (None, None)
    assert (entries["rows"].shape, entries["rows"].offset, entries["rows"].stride) == (
        (2, 6),
        6,
        (6, 1),
    )
    assert (entries["cols"].shape, entries["cols"].offset, entries["cols"].stride) == (
        (4, 2),
        2,
        (6, 1),
    )
    assert (entries["t"].shape, entries["t"].offset, entries["t"].stride) == ((6, 4), 0, (1, 6))
    assert (entries["slice"].shape, entries["slice"].offset, entries["slice"].stride) == (
        (10,),
        10,
        (1,),
    )
    assert len({entries[n].oid for n in ("base", "rows", "cols", "t")}) == 1
    # A storage shared by several views is one flat object of its dtype: the whole storage.
    assert_object(
        repo, entries["base"].oid, dtype="F32", shape=(24,), payload=storage_bytes(views["base"])
    )
    assert_object(
        repo, entries["slice"].oid, dtype="F32", shape=(100,), payload=storage_bytes(views["slice"])
    )
    # The view's elements are where offset and stride say.
    flat = torch.frombuffer(bytearray(storage_bytes(views["cols"])), dtype=torch.float32)
    cols = entries["cols"]
    rebuilt = torch.as_strided(flat, cols.shape, cols.stride, cols.offset)
    assert torch.equal(rebuilt, views["cols"])


def test_formats_nested_checkpoint_names_optimizer_state_and_metrics(repo_copy: tuple) -> None:
    git_env, repo, made, _ = repo_copy
    manifest = index_manifest(git_env, repo, "nested.pth")
    names = {t.name for t in manifest.tensors}
    assert {"model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias"} <= names
    for index in range(4):
        assert {
            f"optimizer.state.{index}.exp_avg",
            f"optimizer.state.{index}.exp_avg_sq",
            f"optimizer.state.{index}.step",
        } <= names
    assert len(names) == 16
    assert_manifest(
        manifest,
        format="torch-zip",
        metrics={
            "epoch": 3,
            "global_step": 1200,
            "loss": 0.25,
            "best_accuracy": 0.9375,
            "finished": False,
            "history.val_loss.0": 0.5,
            "history.val_loss.2": 0.3,
            "optimizer.param_groups.0.lr": 0.001,
            "optimizer.param_groups.0.betas.1": 0.999,
            "hparams.lr": 0.001,
            "hparams.layers": 2,
        },
    )
    assert "run_name" not in manifest.metrics
    text = git_env.run("git", "cat-file", "blob", ":nested.pth", cwd=repo).stdout.decode()
    assert (
        "\nmetric epoch 3\n" in text
        and "\nmetric loss 0.25\n" in text
        and "\nmetric finished false\n" in text
    )
    oids = tensor_oids(manifest)
    state = made["nested.pth"]["optimizer"]["state"]
    assert_object(repo, oids["optimizer.state.2.exp_avg"], tensor=state[2]["exp_avg"])
    assert_object(repo, oids["optimizer.state.0.step"], tensor=state[0]["step"])
    assert_object(repo, oids["model.2.weight"], tensor=made["nested.pth"]["model"]["2.weight"])


def test_formats_bf16_model(repo_copy: tuple) -> None:
    git_env, repo, made, _ = repo_copy
    checkpoint = made["bf16_model.pt"]
    manifest = assert_manifest(
        index_manifest(git_env, repo, "bf16_model.pt"),
        format="torch-zip",
        tensors={name: ("BF16", tuple(t.shape)) for name, t in checkpoint.items()},
    )
    for name, oid in tensor_oids(manifest).items():
        assert_object(repo, oid, tensor=checkpoint[name])


@pytest.mark.parametrize("name", ["torch.safetensors", "numpy.safetensors"])
def test_formats_safetensors_one_object_per_tensor(repo_copy: tuple, name: str) -> None:
    git_env, repo, made, _ = repo_copy
    tensors = made[name]
    types = {
        np.dtype("float32"): "F32",
        np.dtype("int32"): "I32",
        torch.float32: "F32",
        torch.bfloat16: "BF16",
        torch.int64: "I64",
    }
    manifest = assert_manifest(
        index_manifest(git_env, repo, name),
        format="safetensors",
        tensors={k: (types[v.dtype], tuple(v.shape)) for k, v in tensors.items()},
    )
    assert manifest.metrics == {}
    assert len(manifest.splices) == len(tensors)
    for tensor_name, oid in tensor_oids(manifest).items():
        value = tensors[tensor_name]
        assert_object(
            repo, oid, tensor=torch.from_numpy(value) if isinstance(value, np.ndarray) else value
        )


@pytest.mark.parametrize("name", OPAQUE)
def test_formats_opaque_files_are_one_u8_object(repo_copy: tuple, name: str) -> None:
    git_env, repo, _, _ = repo_copy
    data = (repo / name).read_bytes()
    manifest = assert_manifest(
        index_manifest(git_env, repo, name), format="opaque", file=data, tensors={}
    )
    assert manifest.metrics == {}
    if not data:
        assert manifest.splices == []
        assert_object(repo, manifest.skeleton, dtype="U8", shape=(0,), payload=b"")
        return
    (splice,) = manifest.splices
    assert (splice.offset, splice.length) == (0, len(data))
    assert_object(repo, splice.oid, dtype="U8", shape=(len(data),), payload=data)


def test_formats_pth_truncated_inside_a_storage_checks_out_byte_exact(
    repo_copy: tuple, tmp_path: Path
) -> None:
    git_env, repo, _, _ = repo_copy
    save(mlp_checkpoint(5, (32, 64, 8)), tmp_path / "full.pth")
    cut = (tmp_path / "full.pth").read_bytes()
    cut = cut[: len(cut) // 2]  # the middle of the file is the 32x64 weight's storage
    (repo / "cut.pth").write_bytes(cut)
    add = git_env.run("git", "add", "cut.pth", cwd=repo).stderr.decode()
    assert "git-theta: warning: cut.pth: " in add and "stored as one opaque object" in add
    (repo / "cut.pth").unlink()
    git_env.git(repo, "checkout", "--", "cut.pth")
    assert (repo / "cut.pth").read_bytes() == cut


def test_formats_object_size_candidates_put_each_object_files_size_first(template: tuple) -> None:
    # A Git LFS store must send each object's size before downloading it; the
    # manifest gives payload lengths, object_sizes the whole file's.
    from git_theta_filter.object_sizes import object_size_candidates

    git_env, repo, _, digests, _ = template
    manifests = [index_manifest(git_env, repo, name) for name in digests]
    candidates = object_size_candidates(manifests)
    objects = assert_all_objects_valid(repo)
    assert set(candidates) == objects
    for oid in objects:
        size = local_store(repo).canonical_size(oid)  # what a remote store holds
        assert candidates[oid][0] == size, f"object {oid}: {size} bytes, guessed {candidates[oid]}"
