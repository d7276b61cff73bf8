"""Sharing through directory stores: a bare repository's own store, or a configured directory."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import torch
from helpers import assert_status_clean, commit_all, local_store, save, sha256_file
from remote_scenarios import (
    MODEL,
    History,
    assert_checkouts_byte_exact,
    assert_valid_objects,
    checkpoint,
    commit_versions,
    init_clone,
    run_round_trip,
)

from git_theta_filter.manifest import Manifest
from git_theta_filter.store.encoded import is_encoded


def store_files(root: Path) -> dict[str, Path]:
    """oid -> path of every object under a store root; other files are named with an "!" key."""
    found: dict[str, Path] = {}
    for path in root.rglob("*") if root.exists() else []:
        if path.is_file():
            key = (
                path.name
                if path.relative_to(root).parts[:2] == (path.name[:2], path.name[2:4])
                else f"!{path}"
            )
            found[key] = path
    return found


def objects_needed(git_env, repo: Path) -> set[str]:
    """Every object that the manifests in the history of all refs name."""
    oids: set[str] = set()
    for line in git_env.git(repo, "rev-list", "--objects", "--all").splitlines():
        sha, _, path = line.partition(" ")
        if path.endswith(".pth"):
            oids |= Manifest.parse(
                git_env.run("git", "cat-file", "blob", sha, cwd=repo).stdout
            ).object_ids()
    return oids


def test_round_trip_through_the_store_of_a_local_bare_repository(git_env, tmp_path):
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    a, b, history = run_round_trip(git_env, tmp_path, str(bare))

    store = bare / "theta" / "objects"
    files = store_files(store)
    assert not [key for key in files if key.startswith("!")], f"stray files in the store: {files}"
    assert_valid_objects(set(files), lambda oid: files[oid].read_bytes())
    # B fetched on demand at each checkout; now it holds exactly what history needs.
    git_env.theta(b, "fsck", "--all")
    git_env.theta(a, "fsck", "--all")


def test_configured_directory_store_with_theta_fetch_and_pull(git_env, tmp_path):
    shared = tmp_path / "nfs"
    shared.mkdir()
    store_url = (shared / "team-objects").as_uri()
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    a = init_clone(git_env, tmp_path / "A", str(bare))
    git_env.git(a, "config", "theta.remote.origin.url", store_url)
    history = History()
    commit_versions(git_env, a, range(3), history)
    git_env.git(a, "push", "-q", "origin", "main")
    assert not (bare / "theta").exists(), "the configured store must win over the bare repository's"

    # A clone that checks manifests out as they are, then `git theta pull`.
    b = tmp_path / "B"
    git_env.run(
        "git",
        "clone",
        "-q",
        "-c",
        f"theta.remote.origin.url={store_url}",
        str(bare),
        str(b),
        env={"GIT_THETA_SKIP_SMUDGE": "1"},
    )
    assert (b / MODEL).read_bytes().startswith(b"git-theta-manifest ")
    pulled = git_env.theta(b, "pull")
    assert sha256_file(b / MODEL) == list(history.files.values())[-1]
    assert_status_clean(git_env, b)
    assert b"wrote 1 model file" in pulled.stderr

    # `fetch --all` brings every version, so old commits check out with the store gone.
    git_env.theta(b, "fetch", "--all")
    (shared / "team-objects").rename(shared / "lost")
    for commit, digest in history.files.items():
        git_env.git(b, "checkout", "-q", commit)
        assert sha256_file(b / MODEL) == digest

    # `push --all` fills a new, empty store with the whole history.
    git_env.theta(b, "push", "--all")
    assert {p.name for p in (shared / "team-objects").glob("*/*/*")} == {
        p.name for p in (shared / "lost").glob("*/*/*")
    }


def test_pre_push_hook_runs_the_users_own_hook_after_uploading(git_env, tmp_path):
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    a = tmp_path / "A"
    git_env.run("git", "init", "-q", str(a))
    log = tmp_path / "user-hook.log"
    user_hook = a / ".git" / "hooks" / "pre-push"
    user_hook.write_text(
        f'#!/bin/sh\necho "args: $@" > {log}\ncat >> {log}\nexit "${{USER_HOOK_EXIT:-0}}"\n'
    )
    user_hook.chmod(0o755)
    git_env.theta(a, "track", "*.pth")
    assert (a / ".git" / "hooks" / "pre-push.pre-theta").exists()
    git_env.git(a, "remote", "add", "origin", str(bare))
    history = History()
    commit_versions(git_env, a, range(1), history)

    # The user's hook refuses: our upload has happened, but no ref moves.
    refused = git_env.run(
        "git", "push", "origin", "main", cwd=a, check=False, env={"USER_HOOK_EXIT": "1"}
    )
    assert refused.returncode != 0
    assert git_env.git(bare, "for-each-ref") == ""
    head = git_env.git(a, "rev-parse", "HEAD").strip()
    assert (
        log.read_text()
        == f"args: origin {bare}\nrefs/heads/main {head} refs/heads/main {'0' * 40}\n"
    )

    git_env.git(a, "push", "-q", "origin", "main")
    assert git_env.git(bare, "rev-parse", "main").strip() == head
    assert set(store_files(bare / "theta" / "objects")) == objects_needed(git_env, a)


def test_push_to_a_remote_without_a_store_warns_that_the_tensors_stay_local(git_env, tmp_path):
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    # A transport that is not a local path (as ssh or https would be), with no store configured.
    url = f"ext::git %s {bare}"
    a = init_clone(git_env, tmp_path / "A", url)
    commit_versions(git_env, a, range(1), History())
    result = git_env.run("git", "-c", "protocol.ext.allow=always", "push", "origin", "main", cwd=a)
    assert (
        "git-theta: warning: remote 'origin' has no object store, so the" in result.stderr.decode()
    )
    assert (
        git_env.git(bare, "rev-parse", "main").strip()
        == git_env.git(a, "rev-parse", "HEAD").strip()
    )
    assert not (bare / "theta").exists()


def test_unreachable_store_refuses_the_push_before_any_ref_moves(git_env, tmp_path):
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    a = init_clone(git_env, tmp_path / "A", str(bare))
    missing_mount = tmp_path / "not-mounted" / "objects"
    git_env.git(a, "config", "theta.remote.origin.url", str(missing_mount))
    commit_versions(git_env, a, range(1), History())

    result = git_env.run("git", "push", "origin", "main", cwd=a, check=False)
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert (
        f"refusing to push to 'origin': uploading tensor objects to {missing_mount} failed"
        in stderr
    )
    assert f"{missing_mount.parent} is not a directory" in stderr
    assert git_env.git(bare, "for-each-ref") == ""
    assert not missing_mount.parent.exists()
    assert list((a / ".git" / "theta" / "tmp").glob("*")) == []

    explicit = git_env.theta(a, "push", check=False)
    assert explicit.returncode == 1 and b"unavailable" in explicit.stderr


def test_corrupt_object_in_the_store_is_refused_on_download(git_env, tmp_path):
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    a = init_clone(git_env, tmp_path / "A", str(bare))
    commit_versions(git_env, a, range(1), History())
    git_env.git(a, "push", "-q", "origin", "main")
    victim = max(store_files(bare / "theta" / "objects").values(), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.chmod(0o644)
    victim.write_bytes(bytes(data))

    b = tmp_path / "B"
    git_env.run("git", "clone", "-q", str(bare), str(b), env={"GIT_THETA_SKIP_SMUDGE": "1"})
    result = git_env.theta(b, "fetch", check=False)
    stderr = result.stderr.decode()
    assert result.returncode == 1
    assert f"object {victim.name} in {bare / 'theta' / 'objects'}: is corrupt" in stderr
    assert not (
        b / ".git" / "theta" / "objects" / victim.name[:2] / victim.name[2:4] / victim.name
    ).exists()
    assert list((b / ".git" / "theta" / "tmp").glob("*")) == []
    # The checkout path refuses it too, and names it.
    (b / MODEL).unlink()
    checkout = git_env.run("git", "checkout", "--", MODEL, cwd=b, check=False)
    assert checkout.returncode != 0 and victim.name in checkout.stderr.decode()


def push_then_lose_an_object(git_env, tmp_path) -> tuple[Path, Path]:
    """A bare repository that A pushed one version to, with one object of its store then
    deleted: the bare repository, and the path of the object that is gone."""
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    a = init_clone(git_env, tmp_path / "A", str(bare))
    commit_versions(git_env, a, range(1), History())
    git_env.git(a, "push", "-q", "origin", "main")
    victim = next(iter(store_files(bare / "theta" / "objects").values()))
    victim.unlink()
    return bare, victim


def test_object_absent_from_the_store_gives_the_missing_object_error(git_env, tmp_path):
    bare, victim = push_then_lose_an_object(git_env, tmp_path)

    result = git_env.run("git", "clone", "-q", str(bare), str(tmp_path / "B"), check=False)
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert f"tensor object {victim.name} is in no remote's store (tried 'origin')" in stderr


def test_theta_fetch_fails_naming_an_object_that_no_remote_s_store_has(git_env, tmp_path):
    # Without a remote named, every remote's store is tried: one that still lacks an
    # object after that must fail the fetch, not leave the checkout to find out.
    bare, victim = push_then_lose_an_object(git_env, tmp_path)
    b = tmp_path / "B"
    git_env.run("git", "clone", "-q", str(bare), str(b), env={"GIT_THETA_SKIP_SMUDGE": "1"})

    result = git_env.theta(b, "fetch", check=False)
    assert result.returncode == 1
    assert (
        f"tensor object {victim.name} is in no remote's store (tried 'origin')"
        in result.stderr.decode()
    )


def test_two_clones_pushing_the_same_objects_at_once(git_env, tmp_path):
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    clones = []
    for name in ("A1", "A2"):
        clone = init_clone(git_env, tmp_path / name, str(bare))
        git_env.git(clone, "config", "theta.transfers", "16")
        # Many objects, identical in both clones: every upload races.
        state = {f"layer{i}.weight": checkpoint(i)["2.weight"] for i in range(24)}
        torch.save(state, clone / MODEL)
        git_env.git(clone, "add", MODEL, ".gitattributes")
        git_env.git(clone, "commit", "-qm", name)
        clones.append(clone)
    assert sha256_file(clones[0] / MODEL) == sha256_file(clones[1] / MODEL)

    pushes = [
        subprocess.Popen(
            ["git", "push", "-q", "origin", f"HEAD:refs/heads/{clone.name}"],
            cwd=clone,
            env=git_env.env,
            stderr=subprocess.PIPE,
        )
        for clone in clones
    ]
    for push in pushes:
        _, stderr = push.communicate(timeout=60)
        assert push.returncode == 0, stderr.decode()

    files = store_files(bare / "theta" / "objects")
    assert not [key for key in files if key.startswith("!")], f"temp files left behind: {files}"
    assert set(files) == objects_needed(git_env, clones[0])
    assert_valid_objects(set(files), lambda oid: files[oid].read_bytes())


def test_fetch_from_a_remote_without_a_store_fails_even_when_nothing_is_missing(git_env, tmp_path):
    """`git theta fetch <remote>` says the remote has no store whatever is local: a typo in
    the remote's name must not pass because every object happens to be here."""
    repo = tmp_path / "A"
    git_env.run("git", "init", "-q", str(repo))
    git_env.theta(repo, "track", "*.pth")
    commit_versions(git_env, repo, range(1), History())
    result = git_env.run("git-theta", "fetch", "nosuchremote", cwd=repo, check=False)
    assert result.returncode == 1
    assert "no object store for remote 'nosuchremote'" in result.stderr.decode()


def large_checkpoint(version: int) -> dict[str, torch.Tensor]:
    """Small tensors, which go into packs, and a 2 MiB one, stored encoded and, from the
    second version on, as a delta: every form a repository's own store holds."""
    state = checkpoint(version)
    generator = torch.Generator().manual_seed(7)
    big = torch.randn(512 * 1024, generator=generator)
    big[: 1000 * version] += 1.0
    state["big"] = big
    return state


def commit_large_versions(git_env, repo: Path, history: History) -> None:
    for version in range(3):
        digest = save(large_checkpoint(version), repo / MODEL)
        past = time.time() - 1000 + 10 * version
        os.utime(repo / MODEL, (past, past))
        history.files[commit_all(git_env, repo, MODEL, ".gitattributes", message=f"v{version}")] = (
            digest
        )


def test_clone_of_a_repository_whose_store_has_packs_and_deltas(git_env, tmp_path):
    """`git clone /path/to/work-tree`: its store is read as that repository keeps it."""
    source = init_clone(git_env, tmp_path / "A", "unused")
    history = History()
    commit_large_versions(git_env, source, history)
    store = local_store(source)
    assert store.packs(), "small objects are packed"
    loose = {oid: store.object_path(oid) for oid in store.iter_loose_oids()}
    big = {oid for oid, path in loose.items() if path.stat().st_size > 1 << 20}
    assert big and all(is_encoded(loose[oid].read_bytes()[:4]) for oid in big)

    clone = tmp_path / "B"
    git_env.run("git", "clone", "-q", str(source), str(clone))
    assert_checkouts_byte_exact(git_env, clone, history)
    git_env.theta(clone, "fsck", "--all")


def test_a_bare_repository_serves_clones_after_its_store_is_repacked(git_env, tmp_path):
    """A server's store once gc has packed and encoded what pushes left canonical."""
    bare = tmp_path / "models.git"
    git_env.run("git", "init", "-q", "--bare", str(bare))
    a = init_clone(git_env, tmp_path / "A", str(bare))
    history = History()
    commit_large_versions(git_env, a, history)
    git_env.git(a, "push", "-q", "origin", "main")
    report = git_env.theta(bare, "repack").stdout.decode()
    assert "packed" in report and "compressed 3 large loose objects" in report
    assert local_store(bare).packs()

    b = tmp_path / "B"
    git_env.run("git", "clone", "-q", str(bare), str(b))
    assert_checkouts_byte_exact(git_env, b, history)
