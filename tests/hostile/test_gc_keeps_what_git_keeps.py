"""Class 7 of docs/security.md: ``git theta gc`` keeps every object that what git keeps needs.

One repository holds a model version kept in only one way for each way git
knows: a branch, its history, a branch's reflog, HEAD's reflog, a ref to a
tree, a ref to a blob, annotated tags of a tree and of a blob, refs/notes/*,
refs/bisect/*, refs/worktree/*, the stash, the main index, a linked
worktree's HEAD, HEAD reflog and index, and a locked worktree's HEAD, reflog
and index after its directory was deleted. ``git theta gc --prune=now`` then
``git gc --prune=now`` run; every manifest git kept must still check out,
byte for byte. theta keeps more than git 2.39's gc: versions named by
MERGE_HEAD, CHERRY_PICK_HEAD and REVERT_HEAD (the operation under way needs
them) and by another worktree's refs/bisect/* and refs/worktree/*.

The versions are cleaned by one ``git add`` and wired in with plumbing
(mktree, commit-tree, update-ref, update-index --cacheinfo), so the filter
starts twice in all: once to clean, once to check out.
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
from helpers import isolated_git_env, tracked_repo
from safetensors.numpy import save

from git_theta_filter.gc import collect_garbage
from git_theta_filter.gitrepo import GitRepo
from git_theta_filter.history import read_manifest_blob
from git_theta_filter.store.local import LocalStore

MODEL = "model.safetensors"

# What alone keeps each version, in git gc's own sense.
KEPT_BY_GIT = (
    "a branch",
    "a branch's history",
    "a branch's reflog",
    "HEAD's reflog",
    "a ref to a tree",
    "an annotated tag of a tree",
    "a ref to a blob",
    "an annotated tag of a blob",
    "refs/notes/commits",
    "refs/bisect/bad",
    "refs/worktree/*",
    "the stash",
    "the main index",
    "a linked worktree's HEAD",
    "a linked worktree's HEAD reflog",
    "a linked worktree's index",
    "a locked worktree's HEAD, its directory gone",
    "a locked worktree's HEAD reflog, its directory gone",
    "a locked worktree's index, its directory gone",
)
# git 2.39's gc prunes these, theta keeps them: named only by a stopped merge,
# cherry-pick or revert, or by another worktree's per-worktree refs (git gc keeps
# the current worktree's only).
KEPT_BEYOND_GIT_GC = (
    "MERGE_HEAD",
    "CHERRY_PICK_HEAD",
    "REVERT_HEAD",
    "refs/worktree/* of a linked worktree",
    "refs/bisect/* of a linked worktree",
)
UNREACHABLE = "nothing at all"


class History:
    """One model version per way of keeping it, cleaned at once; plumbing wires each in."""

    def __init__(self, git_env, repo: Path) -> None:
        self.git_env, self.repo = git_env, repo
        reasons = (*KEPT_BY_GIT, *KEPT_BEYOND_GIT_GC, UNREACHABLE)
        versions = repo / "versions"
        versions.mkdir()
        contents = {}
        for number, why in enumerate(reasons):
            rng = np.random.default_rng(number)
            # One version large enough to be a loose object; the rest go into a pack.
            size = 300_000 if why == "the main index" else 64
            contents[why] = save({"w": rng.standard_normal(size).astype(np.float32)})
            (versions / f"{number}.safetensors").write_bytes(contents[why])
        self.git("add", "versions")
        staged = {}
        for line in self.git("ls-files", "-s", "versions").splitlines():
            meta, path = line.split("\t")
            staged[int(Path(path).stem)] = meta.split()[1]
        self.git("rm", "-r", "-q", "--cached", "versions")
        shutil.rmtree(versions)
        self.blob = {why: staged[number] for number, why in enumerate(reasons)}
        self.content = {self.blob[why]: data for why, data in contents.items()}
        self.base = self.git("rev-parse", "HEAD")
        self.attributes = self.git("rev-parse", "HEAD:.gitattributes")

    def git(self, *args: str, cwd: Path | None = None, input: bytes | None = None) -> str:
        return self.git_env.git(cwd or self.repo, *args, input=input).strip()

    def tree(self, why: str) -> str:
        entries = [(".gitattributes", self.attributes), (MODEL, self.blob[why])]
        listing = "".join(f"100644 blob {blob}\t{path}\n" for path, blob in entries)
        return self.git("mktree", input=listing.encode())

    def commit(self, why: str, parent: str | None = None) -> str:
        return self.git("commit-tree", "-p", parent or self.base, "-m", why, self.tree(why))

    def stage(self, why: str, cwd: Path | None = None) -> None:
        self.git(
            "update-index", "--add", "--cacheinfo", f"100644,{self.blob[why]},{MODEL}", cwd=cwd
        )

    def move_head(self, whys: tuple[str, ...], cwd: Path | None = None) -> None:
        """Point HEAD (detached) at a commit of each version in turn: the last one is
        HEAD, the others are only in HEAD's reflog."""
        for why in whys:
            self.git("update-ref", "--no-deref", "-m", why, "HEAD", self.commit(why), cwd=cwd)

    def git_dir(self, cwd: Path) -> Path:
        return Path(self.git("rev-parse", "--absolute-git-dir", cwd=cwd))


@pytest.fixture(scope="module")
def every_root(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gc")
    git_env = isolated_git_env(root)
    # Reflog entries must be recent for git gc's own expiry (90 days) to keep them.
    for name in ("GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE"):
        git_env.env.pop(name, None)
    repo = tracked_repo(git_env, root / "repo", ("*.safetensors",))
    h = History(git_env, repo)
    h.git("update-ref", "refs/heads/main", h.commit("a branch", h.commit("a branch's history")))
    h.git("update-ref", "-m", "made", "refs/heads/scratch", h.commit("a branch's reflog"))
    h.git("update-ref", "-m", "moved away", "refs/heads/scratch", h.base)
    h.move_head(("HEAD's reflog",))
    h.git("symbolic-ref", "-m", "back", "HEAD", "refs/heads/main")
    h.git("update-ref", "refs/keep/tree", h.tree("a ref to a tree"))
    h.git("tag", "-a", "-m", "tree", "tree-tag", h.tree("an annotated tag of a tree"))
    h.git("update-ref", "refs/keep/blob", h.blob["a ref to a blob"])
    h.git("tag", "-a", "-m", "blob", "blob-tag", h.blob["an annotated tag of a blob"])
    h.git("notes", "add", "-C", h.blob["refs/notes/commits"], "main")
    h.git("update-ref", "refs/bisect/bad", h.commit("refs/bisect/bad"))
    h.git("update-ref", "refs/worktree/keep", h.commit("refs/worktree/*"))
    h.git("stash", "store", "-m", "stashed", h.commit("the stash"))
    h.stage("the main index")
    (h.git_dir(repo) / "MERGE_HEAD").write_text(h.commit("MERGE_HEAD") + "\n")

    linked = root / "linked"
    h.git("worktree", "add", "-q", "--no-checkout", "--detach", str(linked), h.base)
    h.move_head(("a linked worktree's HEAD reflog", "a linked worktree's HEAD"), cwd=linked)
    h.stage("a linked worktree's index", cwd=linked)
    for ref in ("refs/worktree/keep", "refs/bisect/bad"):
        kept = h.commit(f"{ref.rsplit('/', 1)[0]}/* of a linked worktree")
        h.git("update-ref", ref, kept, cwd=linked)
    (h.git_dir(linked) / "CHERRY_PICK_HEAD").write_text(h.commit("CHERRY_PICK_HEAD") + "\n")

    locked = root / "locked"
    h.git("worktree", "add", "-q", "--no-checkout", "--detach", str(locked), h.base)
    h.move_head(
        (
            "a locked worktree's HEAD reflog, its directory gone",
            "a locked worktree's HEAD, its directory gone",
        ),
        cwd=locked,
    )
    h.stage("a locked worktree's index, its directory gone", cwd=locked)
    (h.git_dir(locked) / "REVERT_HEAD").write_text(h.commit("REVERT_HEAD") + "\n")
    h.git("worktree", "lock", "--reason", "on a removable disk", str(locked))
    shutil.rmtree(locked)
    return git_env, repo, h


def _lacking(repo: Path, blobs: dict[str, str]) -> dict[str, list[str]]:
    """For each manifest blob (-> what keeps it), the objects it names that the store lacks."""
    git = pygit2.Repository(str(repo))
    store = LocalStore(repo / ".git" / "theta")
    lacking = {}
    for blob, why in blobs.items():
        manifest = read_manifest_blob(git, blob)
        assert manifest is not None, why
        if absent := sorted(oid for oid in manifest.object_ids() if not store.has(oid)):
            lacking[why] = absent
    return lacking


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


def _not_checking_out(git_env, repo: Path, expected: dict[str, bytes]) -> list[str]:
    """The manifest blobs that do not check out through the filter as ``expected``
    says, byte for byte; one git process for all of them."""
    request = "".join(f"{blob} {MODEL}\n" for blob in expected).encode()
    out = git_env.run("git", "cat-file", "--batch", "--filters", cwd=repo, input=request).stdout
    wrong = []
    for blob, data in expected.items():
        # git 2.39 prints the size before filtering in the header: read the expected length.
        header, _, out = out.partition(b"\n")
        assert header.split()[:2] == [blob.encode(), b"blob"], header[:100]
        if out[: len(data)] != data or out[len(data) : len(data) + 1] != b"\n":
            return [*wrong, *list(expected)[len(wrong) :]]  # out of step from here on
        out = out[len(data) + 1 :]
    return wrong


def test_gc_keeps_everything_git_gc_keeps_and_what_a_stopped_operation_names(every_root):
    git_env, repo, h = every_root
    # From a linked worktree, then from the main one: each sees every worktree's roots.
    git_env.theta(repo.parent / "linked", "gc", "--prune=now")
    git_env.theta(repo, "gc", "--prune=now")
    by_blob = {h.blob[why]: why for why in (*KEPT_BY_GIT, *KEPT_BEYOND_GIT_GC)}
    assert _lacking(repo, by_blob) == {}
    # gc did delete: what only the unreachable version held is gone.
    git = pygit2.Repository(str(repo))
    store = LocalStore(repo / ".git" / "theta")
    others = set().union(*(read_manifest_blob(git, b).object_ids() for b in by_blob))
    only_unreachable = read_manifest_blob(git, h.blob[UNREACHABLE]).object_ids() - others
    assert only_unreachable and not any(store.has(oid) for oid in only_unreachable)

    git_env.git(repo, "gc", "-q", "--prune=now")
    kept_by_git = _manifests_in_odb(repo)
    # Each way of keeping a version was exercised, and git kept each one.
    assert not {why for why in KEPT_BY_GIT if h.blob[why] not in kept_by_git}
    assert kept_by_git <= set(h.content)  # no manifest but the versions made here
    assert _not_checking_out(git_env, repo, {b: h.content[b] for b in sorted(kept_by_git)}) == []


@pytest.fixture
def empty_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GitRepo:
    """A new repository, git isolated from the user's configuration; nothing reachable."""
    for key in list(os.environ):
        if key.startswith("GIT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    return GitRepo.discover(tmp_path / "repo")


def _age(theta_dir: Path, days: float) -> None:
    then = time.time() - days * 86400
    for path in theta_dir.rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


@pytest.mark.parametrize(
    "held",
    ["a loose small object", "a loose large object", "a packed object", "the previous version"],
)
def test_gc_grace_period_counts_from_an_add_that_found_the_object_stored(empty_repo, held):
    """An add that finds its object stored (nothing written) freshens it: a prune
    with a grace period keeps it, while an object as old that no add needed goes."""
    store = empty_repo.store()
    size = 2 << 20 if held == "a loose large object" else 256
    payload = np.random.default_rng(1).bytes(size)

    def add() -> str:
        if held == "a packed object":
            with store.packing():
                return store.write_bytes(payload)
        return store.write_bytes(payload)

    oid = add()
    assert (held == "a packed object") == (oid in store.packed_oids())
    old = store.write_bytes(b"needed by no add since")
    _age(store.theta_dir, days=3)
    if held == "the previous version":
        with store.expecting([oid]):  # compared with it, neither hashed nor written again
            assert add() == oid
    else:
        assert add() == oid
    report = collect_garbage(empty_repo, time.time() - 86400, dry_run=False)
    assert report.deleted == [old]
    assert store.has(oid)


def test_gc_keeps_the_objects_of_a_manifest_this_version_cannot_read(git_env, repo):
    """A manifest that git keeps but this git-theta cannot parse (a newer version's,
    written by a teammate's newer git-theta) still names objects someone needs: gc
    keeps every object id it holds instead of taking it for no manifest."""
    (repo / MODEL).write_bytes(save({"w": np.arange(4096, dtype=np.float32)}))
    git_env.git(repo, "add", MODEL)
    git_env.git(repo, "commit", "-qm", "model")
    current = git_env.git(repo, "cat-file", "blob", f"HEAD:{MODEL}").encode()
    first, rest = current.split(b"\n", 1)
    assert first == b"git-theta-manifest 1"
    newer = b"git-theta-manifest 2\n" + rest
    blob = (
        git_env.run("git", "hash-object", "-w", "--stdin", cwd=repo, input=newer)
        .stdout.decode()
        .strip()
    )
    # The newer manifest replaces the model in the index and in a new, only, history.
    git_env.git(repo, "update-index", "--cacheinfo", f"100644,{blob},{MODEL}")
    tree = git_env.git(repo, "write-tree").strip()
    commit = git_env.git(repo, "commit-tree", tree, "-m", "newer").strip()
    git_env.git(repo, "update-ref", "refs/heads/main", commit)
    git_env.git(repo, "reflog", "expire", "--expire=now", "--all")
    named = read_manifest_blob(
        pygit2.Repository(str(repo / ".git")),
        git_env.git(repo, "hash-object", "--stdin", input=current).strip(),
    )
    assert named is not None

    git_env.theta(repo, "gc", "--prune=now")

    store = LocalStore(repo / ".git" / "theta")
    lost = sorted(oid for oid in named.object_ids() if not store.has(oid))
    assert not lost, f"gc deleted objects a kept manifest names: {lost}"


def test_gc_keeps_the_objects_of_a_commit_that_a_replace_ref_hides(git_env, repo):
    """`git replace` makes git's walks read another commit in a commit's place, but git
    gc walks without replacements (prune disables them) and keeps the original and its
    tree: a clone, which fetches no refs/replace/*, checks that tree out."""
    rng = np.random.default_rng(5)
    blobs = []
    for message in ("first", "second"):
        (repo / MODEL).write_bytes(save({"w": rng.standard_normal(4096).astype(np.float32)}))
        git_env.git(repo, "add", MODEL)
        git_env.git(repo, "commit", "-qm", message)
        blobs.append(git_env.git(repo, "rev-parse", f"HEAD:{MODEL}").strip())
    # The second commit replaced by one with the first commit's tree.
    first_tree = git_env.git(repo, "rev-parse", "HEAD~1^{tree}").strip()
    stand_in = git_env.git(repo, "commit-tree", first_tree, "-p", "HEAD~1", "-m", "stand-in")
    git_env.git(repo, "replace", "HEAD", stand_in.strip())
    git_env.git(repo, "reset", "-q", "--hard")  # the index now holds the first version
    git_env.git(repo, "reflog", "expire", "--expire=now", "--all")
    git = pygit2.Repository(str(repo / ".git"))
    second = read_manifest_blob(git, blobs[1])
    assert second is not None

    git_env.theta(repo, "gc", "--prune=now")

    store = LocalStore(repo / ".git" / "theta")
    lost = sorted(oid for oid in second.object_ids() if not store.has(oid))
    assert not lost, f"gc deleted objects of the replaced commit's tree: {lost}"
    git_env.git(repo, "gc", "-q", "--prune=now")
    assert blobs[1] in git.odb, "git gc kept the replaced commit's tree"
