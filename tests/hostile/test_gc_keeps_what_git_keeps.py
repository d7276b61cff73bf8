"""Class 7 of docs/security.md: ``git theta gc`` keeps every object that what ``git gc`` keeps needs.

One repository holds a model version reachable only in each way git knows:
a ref to a tree, a ref to a blob, annotated tags of a tree and of a blob,
refs/notes/*, refs/bisect/*, refs/worktree/*, the stash, a linked worktree's
HEAD, index and reflog, a locked worktree whose directory is gone, the main
index, and HEAD's reflog. ``git theta gc --prune=now`` then ``git gc
--prune=now`` run; every manifest blob git kept must still have all its
objects. MERGE_HEAD, CHERRY_PICK_HEAD and REVERT_HEAD name versions that git
gc itself does not keep; theta keeps them too, since the operation under way
needs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pygit2
import pytest
from helpers import isolated_git_env
from safetensors.numpy import save_file

from git_theta_filter.history import read_manifest_blob
from git_theta_filter.store.local import LocalStore

MODEL = "model.safetensors"


class Versions:
    """Writes model versions with distinct tensors; remembers the manifest blob of each."""

    def __init__(self, git_env, repo: Path) -> None:
        self.git_env, self.repo = git_env, repo
        self.count = 0
        self.kept_by: dict[str, str] = {}  # manifest blob -> what alone keeps it

    def write(self, where: Path | None = None, path: str = MODEL) -> None:
        self.count += 1
        rng = np.random.default_rng(self.count)
        save_file(
            {"w": rng.standard_normal(64).astype(np.float32)}, str((where or self.repo) / path)
        )

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return self.git_env.git(cwd or self.repo, *args).strip()

    def commit(self, why: str, cwd: Path | None = None) -> str:
        self.write(cwd)
        self.git("add", MODEL, cwd=cwd)
        self.git("commit", "-q", "-m", why, cwd=cwd)
        self.kept_by[self.git("rev-parse", f"HEAD:{MODEL}", cwd=cwd)] = why
        return self.git("rev-parse", "HEAD", cwd=cwd)

    def stage(self, why: str, cwd: Path | None = None) -> str:
        self.write(cwd)
        self.git("add", MODEL, cwd=cwd)
        blob = self.git("rev-parse", f":{MODEL}", cwd=cwd)
        self.kept_by[blob] = why
        return blob


def _detach_and_forget(v: Versions, commit_away: str = "main") -> None:
    """Leave the commit just made reachable only by what the caller set up."""
    v.git("checkout", "-q", commit_away)
    v.git("branch", "-q", "-D", "scratch")
    v.git("reflog", "expire", "--expire=now", "--expire-unreachable=now", "--all")


@pytest.fixture(scope="module")
def every_root(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gc")
    git_env = isolated_git_env(root)
    # Reflog entries must be recent for git gc's own expiry (90 days) to keep them.
    for name in ("GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE"):
        git_env.env.pop(name, None)
    repo = root / "repo"
    git_env.run("git", "init", "-q", str(repo))
    git_env.theta(repo, "track", "*.safetensors")
    (repo / "notes.txt").write_text("base\n")
    git_env.git(repo, "add", ".")
    git_env.git(repo, "commit", "-q", "-m", "base")
    v = Versions(git_env, repo)
    v.commit("main branch")

    def on_scratch(why: str) -> str:
        v.git("checkout", "-q", "-b", "scratch")
        return v.commit(why)

    # A ref to a tree, a ref to a blob, annotated tags of a tree and of a blob.
    on_scratch("ref to a tree")
    v.git("update-ref", "refs/keep/tree", "HEAD^{tree}")
    _detach_and_forget(v)
    on_scratch("annotated tag of a tree")
    v.git("tag", "-a", "-m", "tree", "tree-tag", "HEAD^{tree}")
    _detach_and_forget(v)
    blob = v.stage("ref to a blob")
    v.git("update-ref", "refs/keep/blob", blob)
    blob = v.stage("annotated tag of a blob")
    v.git("tag", "-a", "-m", "blob", "blob-tag", blob)
    v.git("reset", "-q")
    # A note whose content is a manifest; refs/bisect/*.
    blob = v.stage("refs/notes/commits")
    v.git("notes", "add", "-C", blob, "HEAD")
    v.git("reset", "-q")
    on_scratch("refs/bisect/bad")
    v.git("update-ref", "refs/bisect/bad", "HEAD")
    _detach_and_forget(v)
    # The stash.
    v.write()
    v.git("stash", "-q")
    v.kept_by[v.git("rev-parse", f"stash@{{0}}:{MODEL}")] = "the stash"
    # A linked worktree: its HEAD, its index, its HEAD reflog and refs/worktree/*.
    linked = root / "linked"
    v.git("worktree", "add", "-q", "--detach", str(linked))
    v.commit("a linked worktree's HEAD reflog", cwd=linked)
    v.git("checkout", "-q", "--detach", "HEAD~1", cwd=linked)
    v.commit("refs/worktree/* of a linked worktree", cwd=linked)
    v.git("update-ref", "refs/worktree/keep", "HEAD", cwd=linked)
    v.git("checkout", "-q", "--detach", "HEAD~1", cwd=linked)
    v.commit("a linked worktree's HEAD", cwd=linked)
    v.stage("a linked worktree's index", cwd=linked)
    # A locked worktree whose directory is gone: git keeps its HEAD, index and reflog.
    locked = root / "locked"
    v.git("worktree", "add", "-q", "--detach", str(locked))
    v.git("worktree", "lock", str(locked))
    v.commit("a locked worktree's HEAD", cwd=locked)
    v.stage("a locked worktree's index", cwd=locked)
    shutil.rmtree(locked)
    # HEAD's reflog, and the main index.
    on_scratch("HEAD's reflog")
    v.git("checkout", "-q", "main")
    v.git("branch", "-q", "-D", "scratch")
    v.stage("the main index")
    return git_env, repo, v


def _operation_in_progress(v: Versions, kind: str) -> str:
    """Leave a merge, cherry-pick or revert stopped on a conflict in notes.txt; the
    model version it brings is named only by MERGE_HEAD / CHERRY_PICK_HEAD / REVERT_HEAD."""
    (v.repo / "notes.txt").write_text("base\n")
    v.git("add", "notes.txt")
    v.git("commit", "-q", "-m", "notes")
    v.git("checkout", "-q", "-b", "scratch")
    (v.repo / "notes.txt").write_text(f"{kind} theirs\n")
    v.write()
    v.git("add", ".")
    v.git("commit", "-q", "-m", kind)
    theirs = v.git("rev-parse", "HEAD")
    blob = v.git("rev-parse", f"HEAD:{MODEL}")
    v.git("checkout", "-q", "main")
    (v.repo / "notes.txt").write_text(f"{kind} ours\n")
    v.git("commit", "-q", "-am", f"before {kind}")
    if kind == "revert":
        v.git("cherry-pick", "-n", theirs)  # bring theirs in, then revert it
        v.git("commit", "-q", "-m", "picked")
        target = "HEAD"
    else:
        target = theirs
    command = {"merge": ["merge"], "cherry-pick": ["cherry-pick"], "revert": ["revert"]}[kind]
    result = v.git_env.run("git", *command, target, cwd=v.repo, check=False)
    assert result.returncode != 0, f"{kind} should stop on the notes.txt conflict"
    # Ours in the index and the work tree: only the operation's head names theirs.
    v.git("checkout", "-q", "HEAD", "--", MODEL)
    v.git_env.run("git", "branch", "-q", "-D", "scratch", cwd=v.repo, check=False)
    v.git("reflog", "expire", "--expire=now", "--expire-unreachable=now", "--all")
    return blob


def _missing_objects(repo: Path, blobs: dict[str, str]) -> dict[str, list[str]]:
    git = pygit2.Repository(str(repo))
    store = LocalStore(repo / ".git" / "theta")
    missing = {}
    for blob, why in blobs.items():
        manifest = read_manifest_blob(git, blob)
        assert manifest is not None, why
        lacking = sorted(oid for oid in manifest.object_ids() if not store.has(oid))
        if lacking:
            missing[why] = lacking
    return missing


def _manifests_in_odb(repo: Path) -> set[str]:
    listing = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch-check=%(objecttype) %(objectname)"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    git = pygit2.Repository(str(repo))
    blobs = [line.split()[1] for line in listing.splitlines() if line.startswith("blob ")]
    return {blob for blob in blobs if read_manifest_blob(git, blob) is not None}


def test_gc_keeps_everything_git_gc_keeps(every_root):
    git_env, repo, v = every_root
    git_env.theta(repo, "gc", "--prune=now")
    git_env.git(repo, "gc", "-q", "--prune=now")
    kept_by_git = _manifests_in_odb(repo)
    # Each way of keeping a version was exercised, and git kept each one.
    assert set(v.kept_by) <= kept_by_git, {
        why for blob, why in v.kept_by.items() if blob not in kept_by_git
    }
    named = {blob: v.kept_by.get(blob, "another version") for blob in kept_by_git}
    assert _missing_objects(repo, named) == {}
    # And every one of them still checks out, byte for byte through the filter.
    for blob, why in named.items():
        result = git_env.run("git", "cat-file", "--filters", f"--path={MODEL}", blob, cwd=repo)
        assert result.stdout[:8] != b"git-thet", why


@pytest.mark.parametrize("kind", ["merge", "cherry-pick", "revert"])
def test_gc_keeps_what_a_stopped_merge_cherry_pick_or_revert_names(git_env, repo, kind):
    v = Versions(git_env, repo)
    v.commit("main")
    blob = _operation_in_progress(v, kind)
    git_env.theta(repo, "gc", "--prune=now")
    assert _missing_objects(repo, {blob: kind}) == {}


@pytest.mark.parametrize("how", ["the same path again", "another path"])
def test_gc_grace_period_counts_from_an_add_that_found_the_object_stored(git_env, repo, how):
    v = Versions(git_env, repo)
    v.write()
    v.git("add", MODEL)
    blob = v.git("rev-parse", f":{MODEL}")
    if how == "another path":
        v.git("rm", "-q", "--cached", MODEL)
    store = repo / ".git" / "theta"
    old = time.time() - 3 * 86400
    for path in store.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))
    # The add finds every object already stored: a dedup hit, nothing written.
    if how == "the same path again":
        os.utime(repo / MODEL, (time.time() + 5, time.time() + 5))  # make git re-clean it
        v.git("add", MODEL)
    else:
        shutil.copy(repo / MODEL, repo / "copy.safetensors")
        v.git("add", "copy.safetensors")
    v.git("rm", "-q", "--cached", MODEL if how == "the same path again" else "copy.safetensors")
    git_env.theta(repo, "gc", "--prune=1.day.ago")
    assert _missing_objects(repo, {blob: how}) == {}
