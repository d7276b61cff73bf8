"""Manifests crafted by an attacker (in a commit someone else pushed).

Each is refused with a named error before anything is allocated for it or
any file is opened: checked in process with an audit hook on every ``open``
and with tracemalloc, then through the real filter process, which must go on
serving the next file, and through `git checkout`.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest
from helpers import large_safetensors_bytes

from git_theta_filter.filter import ThetaFilter
from git_theta_filter.formats import layout
from git_theta_filter.formats.safetensors_writer import read_stored_safetensors
from git_theta_filter.formats.torch_zip_writer import read_stored_torch_zip
from git_theta_filter.gitrepo import GitRepo
from git_theta_filter.manifest import MAX_MANIFEST_BYTES, Manifest, ManifestError
from git_theta_filter.pickle_check import read_data_pkl
from git_theta_filter.pktline import FLUSH, MAX_PAYLOAD, PktLineReader, encode, encode_text
from git_theta_filter.smudge import prepare_smudge
from git_theta_filter.store.local import LocalStore
from git_theta_filter.store.object_format import ObjectFormatError

SHA = "5" * 64
SKEL = "a" * 64
OID = "b" * 64
VALID = (
    "git-theta-manifest 1\nformat torch-zip\nsize 1000\n"
    f"sha256 {SHA}\nskeleton {SKEL}\n"
    f"tensor w F32 [4,8] {OID}\n"
    f"splice 64 128 {OID}\n"
)
HUGE = 100 << 20


def crafted(old: str, new: str) -> bytes:
    assert old in VALID, old
    return VALID.replace(old, new, 1).encode()


# name -> (manifest bytes, the start of the error message)
CASES: dict[str, tuple[bytes, str]] = {
    "oid-dot-dot-skeleton": (
        crafted(f"skeleton {SKEL}", "skeleton ../../../../etc/passwd"),
        "invalid manifest: line 5: bad object id '../../../../etc/passwd'",
    ),
    "oid-dot-dot-splice": (
        crafted(f"splice 64 128 {OID}", f"splice 64 128 ../{OID[3:]}"),
        "invalid manifest: line 7: bad object id '../bbb",
    ),
    "oid-non-hex": (
        crafted(f"skeleton {SKEL}", f"skeleton {'g' * 64}"),
        "invalid manifest: line 5: bad object id 'gggg",
    ),
    "oid-uppercase": (
        crafted(f"skeleton {SKEL}", f"skeleton {SKEL.upper()}"),
        "invalid manifest: line 5: bad object id 'AAAA",
    ),
    "oid-too-short": (
        crafted(f"skeleton {SKEL}", f"skeleton {SKEL[:63]}"),
        "invalid manifest: line 5: bad object id",
    ),
    "oid-too-long": (
        crafted(f"skeleton {SKEL}", f"skeleton {SKEL}a"),
        "invalid manifest: line 5: bad object id",
    ),
    "shape-2-to-the-62": (
        crafted("[4,8]", f"[{2**31},{2**31}]"),
        "invalid manifest: tensor 'w' reaches past the end of its object",
    ),
    "size-2-to-the-62": (
        crafted("size 1000", f"size {2**62}"),
        f"invalid manifest: line 3: size {2**62} is too large",
    ),
    "shape-65-dimensions": (
        crafted("[4,8]", "[" + ",".join(["1"] * 65) + "]"),
        "invalid manifest: line 6: shape has more than 64 dimensions",
    ),
    "splice-past-the-end": (
        crafted("splice 64 128", "splice 900 128"),
        "invalid manifest: line 7: splice at 900 runs past the file size 1000",
    ),
    "splices-overlapping": (
        VALID.encode() + f"splice 100 8 {'c' * 64}\n".encode(),
        "invalid manifest: line 8: splices overlap or are out of order",
    ),
    "version-unknown": (
        crafted("git-theta-manifest 1", "git-theta-manifest 2"),
        "invalid manifest: line 1: unsupported manifest version '2'",
    ),
    "manifest-100-MB": (
        VALID.encode() + b"metric x 1\n" * (HUGE // 11),
        f"invalid manifest: {HUGE // 11 * 11 + len(VALID)} bytes is over the "
        f"{MAX_MANIFEST_BYTES}-byte limit",
    ),
}

_opened: list[object] | None = None


def _record_opens(event: str, args: tuple) -> None:
    # os.fdopen() raises an "open" event with the descriptor, which os.open() opened.
    if _opened is not None and event == "open" and not isinstance(args[0], int):
        _opened.append(args[0])


sys.addaudithook(_record_opens)  # audit hooks cannot be removed; it records only inside watch()


def watch(call):
    """Run ``call``; return (its exception, every path it opened, the peak bytes it allocated)."""
    global _opened
    _opened = []
    tracemalloc.start()
    try:
        call()
    except Exception as exc:  # the point is to look at it
        error = exc
    else:
        error = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        opened, _opened = _opened, None
    return error, opened, peak


@pytest.mark.parametrize("name", sorted(CASES))
def test_crafted_manifest_is_refused_before_any_allocation_or_file_access(
    name: str, tmp_path: Path
) -> None:
    data, message = CASES[name]
    store = LocalStore(tmp_path / "theta")
    error, opened, peak = watch(lambda: prepare_smudge(data, store, f"{name}.pth"))
    assert isinstance(error, ManifestError), error
    assert str(error).startswith(message)
    assert opened == [], f"opened {opened}"
    assert peak < 1 << 20, f"allocated {peak} bytes"


def test_a_manifest_within_limits_opens_only_its_objects_in_the_store(tmp_path: Path) -> None:
    """Parses (one 2**60-byte splice is a legal size), then the store's object disagrees:
    no byte is read into memory for it.
    """
    store = LocalStore(tmp_path / "theta")
    oid = store.write_bytes(b"tiny")
    empty = store.write_bytes(b"")
    data = (
        f"git-theta-manifest 1\nformat opaque\nsize {2**60}\nsha256 {SHA}\n"
        f"skeleton {empty}\nsplice 0 {2**60} {oid}\n"
    ).encode()
    Manifest.parse(data)
    error, opened, peak = watch(lambda: prepare_smudge(data, store, "big.pth"))
    assert isinstance(error, ObjectFormatError) and error.oid == oid
    assert "payload is 4 bytes, the manifest of big.pth says 1152921504606846976" in str(error)
    assert opened and all(Path(p).is_relative_to(store.objects_dir) for p in opened), opened
    assert peak < 1 << 20


def stored_model(store: LocalStore, tmp_path: Path, file_format: str) -> Manifest:
    """A small real model file of ``file_format``, cleaned into ``store``."""
    import torch
    from safetensors.torch import save_file

    from git_theta_filter.clean import clean

    path = tmp_path / f"model.{file_format}"
    state = {"w": torch.ones(4, 8), "b": torch.zeros(8)}
    if file_format == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    with open(path, "rb", buffering=0) as file:
        return Manifest.parse(clean(file, store, path.name))


SKELETON_READERS = {
    "smudge": ("pth", lambda manifest, store: prepare_smudge(manifest.render(), store, "m")),
    "fsck-check-pickles": ("pth", lambda manifest, store: read_data_pkl(store, manifest, "m")),
    "merge-torch-zip": ("pth", lambda manifest, store: read_stored_torch_zip(manifest, store, "m")),
    "merge-safetensors": (
        "safetensors",
        lambda manifest, store: read_stored_safetensors(manifest, store, "m"),
    ),
}


@pytest.mark.parametrize("reader", sorted(SKELETON_READERS))
def test_a_skeleton_over_the_limit_is_refused_before_its_object_is_opened(
    reader: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every reader of a skeleton holds it in memory, so its length is checked first."""
    file_format, read = SKELETON_READERS[reader]
    store = LocalStore(tmp_path / "theta")
    manifest = stored_model(store, tmp_path, file_format)
    read(manifest, store)  # within the limit, it reads
    monkeypatch.setattr(layout, "MAX_SKELETON_BYTES", manifest.skeleton_length - 1)
    error, opened, _ = watch(lambda: read(manifest, store))
    assert isinstance(error, ObjectFormatError) and error.oid == manifest.skeleton, error
    assert f"skeleton of {manifest.skeleton_length} bytes is over the limit" in str(error)
    assert str(store.object_path(manifest.skeleton)) not in map(str, opened), opened


# -- the real filter process ---------------------------------------------------------------------


def smudge_request(proc: subprocess.Popen, pathname: str, content: bytes) -> None:
    """Write one smudge request, content packet by packet (no second copy of a large blob)."""
    write = proc.stdin.write
    write(encode_text("command=smudge") + encode_text(f"pathname={pathname}") + FLUSH)
    view = memoryview(content)
    for start in range(0, len(view), MAX_PAYLOAD):
        write(encode(view[start : start + MAX_PAYLOAD]))
    write(FLUSH)
    proc.stdin.flush()


def read_response(reader: PktLineReader) -> tuple[list[str], bytes | None]:
    status = reader.read_text_list()
    if status != ["status=success"]:
        return status, None
    content = bytearray()
    while (packet := reader.read_packet()) is not None:
        content += packet
    assert reader.read_text_list() == []
    return status, bytes(content)


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every case sent to one filter process, then a non-manifest blob larger than any manifest."""
    from helpers import isolated_git_env, tracked_repo

    root = tmp_path_factory.mktemp("crafted")
    git_env = isolated_git_env(root)
    repo = tracked_repo(git_env, root / "repo")
    proc = subprocess.Popen(
        ["git-theta", "filter-process"],
        cwd=repo,
        env=git_env.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        reader = PktLineReader(proc.stdout)
        proc.stdin.write(encode_text("git-filter-client") + encode_text("version=2") + FLUSH)
        proc.stdin.write(encode_text("capability=clean") + encode_text("capability=smudge") + FLUSH)
        proc.stdin.flush()
        reader.read_text_list()
        reader.read_text_list()
        baseline = peak_rss(proc.pid)
        responses = {}
        for name in sorted(CASES, key=lambda n: n == "manifest-100-MB"):
            smudge_request(proc, f"{name}.pth", CASES[name][0])
            responses[name] = read_response(reader)
        growth = peak_rss(proc.pid) - baseline
        # Not a manifest: passes through unchanged, however large.
        line = b"PK\x03\x04 committed before it was tracked\n"
        passthrough = line * (MAX_MANIFEST_BYTES // len(line) + 1)
        smudge_request(proc, "plain.pth", passthrough)
        passed = read_response(reader)
        proc.stdin.close()
        stderr = proc.stderr.read().decode()
        code = proc.wait()
    finally:
        watchdog.cancel()
        proc.kill()
    errors = {}
    for line in stderr.splitlines():
        prefix, _, rest = line.partition(".pth: ")
        errors[prefix.removeprefix("git-theta: error: ")] = rest
    return {
        "responses": responses,
        "errors": errors,
        "growth": growth,
        "passthrough": (passthrough, passed),
        "code": code,
        "git_env": git_env,
        "repo": repo,
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_filter_process_refuses_a_crafted_manifest_and_serves_the_next_file(
    served: dict, name: str
) -> None:
    assert served["responses"][name] == (["status=error"], None)
    assert served["errors"][name].startswith(CASES[name][1].split(": ", 1)[0])
    assert served["code"] == 0


def test_filter_process_refuses_a_100_MB_manifest_without_buffering_it(served: dict) -> None:
    assert served["growth"] < 64 << 20, f"the filter grew by {served['growth'] >> 20} MB"
    assert (
        served["errors"]["manifest-100-MB"]
        == "invalid manifest: starts like a manifest but is over the "
        f"{MAX_MANIFEST_BYTES}-byte limit"
    )


def test_filter_process_passes_large_non_manifest_content_through_unchanged(served: dict) -> None:
    data, (status, content) = served["passthrough"]
    assert len(data) > MAX_MANIFEST_BYTES
    assert status == ["status=success"] and content == data


@pytest.mark.parametrize("name", ["oid-dot-dot-skeleton", "manifest-100-MB"])
def test_git_checkout_of_a_crafted_manifest_fails_with_the_reason(served: dict, name: str) -> None:
    git_env, repo = served["git_env"], served["repo"]
    data, message = CASES[name]
    blob = (
        git_env.run("git", "hash-object", "-w", "--stdin", cwd=repo, input=data)
        .stdout.decode()
        .strip()
    )
    git_env.git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{name}.pth")
    git_env.git(repo, "commit", "-qm", name)
    (repo / f"{name}.pth").unlink(missing_ok=True)
    result = git_env.run("git", "checkout", "--", f"{name}.pth", cwd=repo, check=False)
    assert result.returncode != 0
    stderr = result.stderr.decode()
    expected = (
        message
        if name != "manifest-100-MB"
        else "invalid manifest: starts like a manifest but is over"
    )
    assert f"git-theta: error: {name}.pth: {expected}" in stderr
    assert f"{name}.pth: smudge filter theta failed" in stderr
    assert not (repo / f"{name}.pth").exists()


def test_a_manifest_cleaned_under_a_large_files_path_is_never_remembered(
    git_env, repo: Path
) -> None:
    """A manifest from someone else's commit, cleaned (passed through) under a large
    work-tree file's path: kept in the clean cache, it would answer later cleans of the
    bytes its sha256 line names (docs/store.md, "Clean cache" rule 3)."""
    path = repo / "big.safetensors"
    path.write_bytes(large_safetensors_bytes(0))
    git_env.git(repo, "add", "big.safetensors")
    manifest = git_env.run("git", "cat-file", "blob", ":big.safetensors", cwd=repo).stdout
    parsed = Manifest.parse(manifest)
    claimed = "ab" * 32
    foreign = manifest.replace(parsed.sha256.encode(), claimed.encode())
    handler = ThetaFilter(GitRepo.discover(repo))
    for name in ("other.safetensors", "big.safetensors"):  # small, then large in the work tree
        assert handler.clean(name, io.BytesIO(foreign)) == foreign
    assert handler.cleaned.lookup_large(claimed, parsed.size, handler.store) is None
