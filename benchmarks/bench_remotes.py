#!/usr/bin/env python3
"""Push and clone+pull of a model history through each kind of remote store.

    python benchmarks/bench_remotes.py                   # five 200 MB checkpoints, every store
    python benchmarks/bench_remotes.py --size-mb 50      # smaller checkpoints
    python benchmarks/bench_remotes.py --stores directory,lfs

Each version of the checkpoint is a "fine-tune" of the one before: a fifth of
its tensors change, so a push sends far fewer bytes than the history's
logical size, and the table shows by how much. Measured, per store:

* **push**: ``git push`` of all versions to a bare repository; the pre-push
  hook uploads the objects (the directory store is the bare repository's own,
  the S3 store is moto's server on 127.0.0.1, in this process).
* **clone + pull**: ``GIT_THETA_SKIP_SMUDGE=1 git clone`` then ``git theta
  pull``, which writes the checked-out file straight from the store.
* **fetch --all**: then every other version's objects, as ``git theta fetch --all``.

The **lfs** store is a Git LFS server (giftless, from ``tests/lfs_server.py``,
on 127.0.0.1) that also serves the git repository over smart HTTP, so the
store is picked from the remote's URL as on GitHub. Its push is timed in two
steps, the first version and then the four fine-tunes, and the same steps
are timed for **git-lfs** pushing the whole files to the same server
(``git lfs push``), then its clone + ``git lfs pull`` and ``git lfs fetch --all``.

MB/s is the logical size (what the files add up to) over wall time;
"transferred" is the bytes that actually reached the other side. torch is
imported only to make the checkpoints. Each store gets its own HOME with
``GIT_CONFIG_NOSYSTEM=1``.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _sandbox import sandbox_env

TENSORS = 20
CHANGED_PER_VERSION = 4
BUCKET = "bench-models"


@dataclass
class Row:
    store: str
    step: str
    seconds: float
    logical: int
    transferred: int
    detail: str = ""

    def cells(self) -> list[str]:
        mb = 1e6
        return [
            self.store,
            self.step,
            f"{self.seconds:.2f}{self.detail}",
            f"{self.logical / mb / self.seconds:.0f}",
            f"{self.transferred / mb:.0f} MB of {self.logical / mb:.0f} MB "
            f"({self.transferred / self.logical:.0%})",
        ]


def make_checkpoints(directory: Path, versions: int, size_mb: int) -> list[Path]:
    """``versions`` fp32 state_dicts of ``size_mb``;
    each changes CHANGED_PER_VERSION tensors of the last.
    """
    import numpy as np
    import torch

    numel = size_mb * 1_000_000 // 4 // TENSORS
    rng = np.random.default_rng(0)
    state = {
        f"layers.{i}.weight": torch.from_numpy(rng.standard_normal(numel, dtype=np.float32))
        for i in range(TENSORS)
    }
    paths = []
    for version in range(versions):
        if version:
            for i in range(CHANGED_PER_VERSION):
                name = f"layers.{(version * CHANGED_PER_VERSION + i) % TENSORS}.weight"
                state[name] = state[name] + 0.01
        path = directory / f"v{version}.pth"
        torch.save(state, path)
        paths.append(path)
    return paths


def tree_bytes(root: Path) -> int:
    return (
        sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
        if root.exists()
        else 0
    )


class Bench:
    def __init__(self, root: Path, extra_env: dict[str, str]) -> None:
        home = root / "home"
        home.mkdir(parents=True)
        self.env = {**sandbox_env(home), **extra_env}
        for key, value in (
            ("user.name", "Bench"),
            ("user.email", "bench@example.invalid"),
            ("init.defaultBranch", "main"),
        ):
            self.run(home, "git", "config", "--global", key, value)
        self.run(home, "git-theta", "install", "--global")

    def run(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> float:
        start = time.perf_counter()
        result = subprocess.run(args, cwd=cwd, env={**self.env, **(env or {})}, capture_output=True)
        if result.returncode != 0:
            raise SystemExit(f"failed: {' '.join(args)}\n{result.stderr.decode(errors='replace')}")
        return time.perf_counter() - start


def bench_store(
    kind: str, root: Path, checkpoints: list[Path], extra_env: dict[str, str], store_bytes
) -> list[Row]:
    bench = Bench(root, extra_env)
    bare, a, b = root / "models.git", root / "A", root / "B"
    bench.run(root, "git", "init", "-q", "--bare", str(bare))
    bench.run(root, "git", "init", "-q", str(a))
    bench.run(a, "git", "theta", "track", "*.pth")
    bench.run(a, "git", "remote", "add", "origin", str(bare))
    clone_config: list[str] = []
    if kind == "s3":
        bench.run(a, "git", "config", "theta.remote.origin.url", f"s3://{BUCKET}/{root.name}")
        clone_config = ["-c", f"theta.remote.origin.url=s3://{BUCKET}/{root.name}"]
    for version, checkpoint in enumerate(checkpoints):
        shutil.copyfile(checkpoint, a / "model.pth")
        bench.run(a, "git", "add", "model.pth", ".gitattributes")
        bench.run(a, "git", "commit", "-qm", f"v{version}")
    size = checkpoints[0].stat().st_size
    history = size * len(checkpoints)

    before = store_bytes()
    push = bench.run(a, "git", "push", "-q", "origin", "main")
    rows = [Row(kind, "push", push, history, store_bytes() - before)]

    clone = bench.run(
        root,
        "git",
        "clone",
        "-q",
        *clone_config,
        str(bare),
        str(b),
        env={"GIT_THETA_SKIP_SMUDGE": "1"},
    )
    pull = bench.run(b, "git", "theta", "pull")
    assert (b / "model.pth").read_bytes() == checkpoints[-1].read_bytes(), "the pulled file differs"
    local = b / ".git" / "theta" / "objects"
    pulled = tree_bytes(local)
    rows.append(
        Row(kind, "clone + pull", clone + pull, size, pulled, f" ({clone:.2f} + {pull:.2f})")
    )
    fetch = bench.run(b, "git", "theta", "fetch", "--all")
    rows.append(Row(kind, "fetch --all", fetch, history - size, tree_bytes(local) - pulled))
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size-mb", type=int, default=200, help="size of each checkpoint (default 200)"
    )
    parser.add_argument("--versions", type=int, default=5, help="number of checkpoints (default 5)")
    parser.add_argument(
        "--stores", default="directory,s3,lfs", help="comma-separated: directory, s3, lfs"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where to work (default: a temp dir, removed afterwards)"
    )
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="theta-bench-remotes-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"making {args.versions} checkpoints of {args.size_mb} MB ...", file=sys.stderr)
        checkpoints = make_checkpoints(work, args.versions, args.size_mb)
        rows: list[Row] = []
        for kind in args.stores.split(","):
            root = work / kind
            print(f"benchmarking the {kind} store ...", file=sys.stderr)
            if kind == "directory":
                rows += bench_store(
                    kind,
                    root,
                    checkpoints,
                    {},
                    lambda root=root: tree_bytes(root / "models.git" / "theta" / "objects"),
                )
            elif kind == "s3":
                rows += bench_s3(root, checkpoints)
            elif kind == "lfs":
                rows += bench_lfs(root, checkpoints)
            else:
                raise SystemExit(f"unknown store kind {kind!r}")
        print(
            f"\n{args.versions} checkpoints of {checkpoints[0].stat().st_size / 1e6:.0f} MB; "
            f"each version changes {CHANGED_PER_VERSION} of {TENSORS} tensors.\n"
        )
        header = ["store", "step", "seconds", "MB/s (logical)", "transferred vs logical"]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row.cells()) + " |")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def bench_s3(root: Path, checkpoints: list[Path]) -> list[Row]:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    try:
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)

        def bucket_bytes() -> int:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix=f"{root.name}/"
            )
            return sum(entry["Size"] for page in pages for entry in page.get("Contents", []))

        return bench_store("s3", root, checkpoints, env, bucket_bytes)
    finally:
        server.stop()


def bench_lfs(root: Path, checkpoints: list[Path]) -> list[Row]:
    """theta with an LFS server as the store, then git-lfs itself, against one giftless."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from lfs_server import LfsServer

    server = LfsServer(root / "server", git=True).start()
    try:
        return _bench_lfs_theta(root, checkpoints, server) + _bench_git_lfs(
            root, checkpoints, server
        )
    finally:
        server.stop()


def _lfs_history(
    bench: Bench, repo: Path, checkpoints: list[Path], push: list[str], stored
) -> tuple[list[Row], int]:
    """Commit and push the first version, then the fine-tunes; a row per push."""
    size = checkpoints[0].stat().st_size
    rows = []
    for step, versions in (("push v0", checkpoints[:1]), ("push fine-tunes", checkpoints[1:])):
        for checkpoint in versions:
            shutil.copyfile(checkpoint, repo / "model.pth")
            bench.run(repo, "git", "add", "model.pth", ".gitattributes")
            bench.run(repo, "git", "commit", "-qm", checkpoint.stem)
        before = stored()
        seconds = bench.run(repo, *push)
        rows.append(Row("", step, seconds, size * len(versions), stored() - before))
    return rows, size


def _bench_lfs_theta(root: Path, checkpoints: list[Path], server) -> list[Row]:
    bench = Bench(root / "theta", {})
    a, b = root / "theta" / "A", root / "theta" / "B"
    url = server.remote_url("theta")
    server.bare("theta")
    bench.run(root, "git", "init", "-q", str(a))
    bench.run(a, "git", "theta", "track", "*.pth")
    bench.run(a, "git", "remote", "add", "origin", url)

    def stored() -> int:
        return tree_bytes(server.storage / "team" / "theta")

    push = ["git", "push", "-q", "origin", "main"]
    rows, size = _lfs_history(bench, a, checkpoints, push, stored)
    clone = bench.run(root, "git", "clone", "-q", url, str(b), env={"GIT_THETA_SKIP_SMUDGE": "1"})
    pull = bench.run(b, "git", "theta", "pull")
    assert (b / "model.pth").read_bytes() == checkpoints[-1].read_bytes(), "the pulled file differs"
    local = b / ".git" / "theta" / "objects"
    pulled = tree_bytes(local)
    rows.append(Row("", "clone + pull", clone + pull, size, pulled, f" ({clone:.2f} + {pull:.2f})"))
    fetch = bench.run(b, "git", "theta", "fetch", "--all")
    history = size * len(checkpoints)
    rows.append(Row("", "fetch --all", fetch, history - size, tree_bytes(local) - pulled))
    for row in rows:
        row.store = "lfs (theta)"
    return rows


def _bench_git_lfs(root: Path, checkpoints: list[Path], server) -> list[Row]:
    if shutil.which("git-lfs") is None:
        print("git-lfs is not installed; skipping its column", file=sys.stderr)
        return []
    bench = Bench(root / "git-lfs", {})
    c, d = root / "git-lfs" / "C", root / "git-lfs" / "D"
    url = server.remote_url("gitlfs")
    server.bare("gitlfs")
    bench.run(root, "git", "init", "-q", str(c))
    bench.run(c, "git", "lfs", "install", "--local")
    bench.run(c, "git", "lfs", "track", "*.pth")
    bench.run(c, "git", "remote", "add", "origin", url)

    def stored() -> int:
        return tree_bytes(server.storage / "team" / "gitlfs")

    # Time the object upload alone (git lfs push), as theta's hook does it before git's push.
    rows, size = _lfs_history(
        bench, c, checkpoints, ["git", "lfs", "push", "origin", "main"], stored
    )
    bench.run(c, "git", "push", "-q", "origin", "main", env={"GIT_LFS_SKIP_PUSH": "1"})
    skip = {"GIT_LFS_SKIP_SMUDGE": "1"}
    clone = bench.run(root, "git", "clone", "-q", url, str(d), env=skip)
    bench.run(d, "git", "lfs", "install", "--local")
    pull = bench.run(d, "git", "lfs", "pull")
    assert (d / "model.pth").read_bytes() == checkpoints[-1].read_bytes(), "git lfs pull differs"
    local = d / ".git" / "lfs" / "objects"
    pulled = tree_bytes(local)
    rows.append(Row("", "clone + pull", clone + pull, size, pulled, f" ({clone:.2f} + {pull:.2f})"))
    fetch = bench.run(d, "git", "lfs", "fetch", "--all")
    history = size * len(checkpoints)
    rows.append(Row("", "fetch --all", fetch, history - size, tree_bytes(local) - pulled))
    for row in rows:
        row.store = "git-lfs"
    return rows


if __name__ == "__main__":
    sys.exit(main())
