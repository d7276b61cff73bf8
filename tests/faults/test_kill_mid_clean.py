"""The filter killed with SIGKILL while `git add` streams a 300 MB checkpoint through it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import torch
from helpers import assert_status_clean, object_path, read_manifest, sha256_file, store_oids

MODEL = "model.pth"


def killed_filter_pid(
    tmp_dir: Path, proc: subprocess.Popen, min_size: int, timeout: float = 60
) -> int | None:
    """The pid of the filter once one of its temp objects holds ``min_size`` bytes
    (its name starts with the pid).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for temp in tmp_dir.glob("*.tmp") if tmp_dir.is_dir() else []:
            try:
                if temp.stat().st_size >= min_size:
                    pid = int(temp.name.partition("-")[0])
                    os.kill(pid, signal.SIGKILL)
                    return pid
            except (FileNotFoundError, ValueError, ProcessLookupError):
                continue
        time.sleep(0.002)
    return None


def test_filter_killed_mid_clean_leaves_no_corrupt_object_and_gc_removes_its_temp_files(
    git_env, repo: Path
) -> None:
    generator = torch.Generator().manual_seed(0)
    # 300 MB: a 240 MB storage streams long enough to be caught mid-write, then two more.
    # Random values: the store compresses, and the temp object must still grow past 32 MB.
    checkpoint = {
        "embedding": torch.randn(60_000_000, generator=generator),
        "layer.weight": torch.randn(3_000_000, generator=generator),
        "layer.bias": torch.arange(12_000_000, dtype=torch.float32),
    }
    torch.save(checkpoint, repo / MODEL)
    del checkpoint
    digest = sha256_file(repo / MODEL)
    tmp_dir = repo / ".git" / "theta" / "tmp"

    add = subprocess.Popen(
        ["git", "add", MODEL],
        cwd=repo,
        env=git_env.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    pid = killed_filter_pid(tmp_dir, add, min_size=32 << 20)
    _, stderr = add.communicate(timeout=120)
    assert pid is not None, "the add finished before the filter could be killed"
    assert add.returncode != 0
    assert f"{MODEL}: clean filter 'theta' failed" in stderr.decode()
    assert git_env.git(repo, "ls-files", "--", MODEL) == "", (
        "the index names a file whose clean was killed"
    )
    leftovers = sorted(p.name for p in tmp_dir.iterdir())
    assert leftovers and all(name.startswith(f"{pid}-") for name in leftovers)
    # Whatever objects the killed filter linked are whole: each hashes to its name.
    for oid in store_oids(repo):
        assert sha256_file(object_path(repo, oid)) == oid

    git_env.git(repo, "add", MODEL)
    git_env.git(repo, "commit", "-qm", "300 MB model")
    git_env.theta(repo, "fsck")
    manifest = read_manifest(git_env, repo, f"HEAD:{MODEL}")
    assert manifest.format == "torch-zip" and manifest.sha256 == digest

    report = json.loads(git_env.theta(repo, "gc", "--json").stdout)
    assert report["temp_files_removed"] == len(leftovers) and report["deleted"] == []
    assert list(tmp_dir.iterdir()) == []

    (repo / MODEL).unlink()
    git_env.git(repo, "checkout", "--", MODEL)
    assert sha256_file(repo / MODEL) == digest
    assert_status_clean(git_env, repo)
