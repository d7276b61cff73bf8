"""blob_stream.py: blobs streamed from one `git cat-file --batch`, one after another."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from git_theta_filter.blob_stream import BlobMissingError, BlobStream, BlobStreamer
from git_theta_filter.errors import ThetaError


@pytest.fixture
def git_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if key.startswith("GIT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    path = tmp_path / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


def blob(git_dir: Path, content: bytes) -> str:
    return (
        subprocess.run(
            ["git", f"--git-dir={git_dir}", "hash-object", "-w", "--stdin"],
            input=content,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .strip()
    )


def read_all(stream, chunk: int = 5) -> bytes:
    out = bytearray()
    buffer = memoryview(bytearray(chunk))
    while count := stream.readinto(buffer):
        out += buffer[:count]
    return bytes(out)


def test_blobs_stream_in_chunks_and_a_half_read_one_is_skipped(git_dir: Path) -> None:
    first, second, empty = b"0123456789" * 7, b"second\nblob\n", b""
    ids = [blob(git_dir, data) for data in (first, second, empty)]
    with BlobStreamer(git_dir) as streamer:
        half = streamer.open(ids[0])
        assert half.size == len(first)
        assert half.readinto(memoryview(bytearray(4))) == 4  # then left unread
        assert read_all(streamer.open(ids[1])) == second
        assert read_all(streamer.open(ids[2])) == empty
        assert read_all(streamer.open(ids[0]), chunk=64) == first


def test_a_missing_blob_or_another_kind_of_object_names_the_path(git_dir: Path) -> None:
    content = blob(git_dir, b"x")
    tree = (
        subprocess.run(
            ["git", f"--git-dir={git_dir}", "mktree"],
            input=f"100644 blob {content}\tx\n".encode(),
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .strip()
    )
    with BlobStreamer(git_dir) as streamer:
        with pytest.raises(BlobMissingError, match=f"model.pth: blob {'0' * 40} is not in"):
            streamer.open("0" * 40, "model.pth")
        with pytest.raises(BlobMissingError):
            streamer.open(tree)  # a tree, not a blob: skipped, and the stream stays in step
        assert read_all(streamer.open(content)) == b"x"


def test_a_blob_cut_short_by_git_is_an_error_not_a_shorter_blob() -> None:
    # git promised 10 bytes and sent 3 before its output ended.
    stream = BlobStream(io.BytesIO(b"abc"), 10)
    with pytest.raises(ThetaError, match="ended in the middle of a blob"):
        read_all(stream)
