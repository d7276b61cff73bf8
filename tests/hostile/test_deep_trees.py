"""Class 4 of docs/security.md: a commit's trees nested deeper than Python's recursion limit.

git commits and checks out a path 1,100 directories deep. Every walk of a
tree that recursed once per directory (what fetch, push and fsck read, a
diff's snapshot of a commit, migrate's scan) failed on it with a
RecursionError, so one such commit broke those commands for everyone who
fetched it.
"""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save_file

DEPTH = 1_100


def test_commands_walk_a_tree_nested_deeper_than_the_recursion_limit(git_env, repo):
    save_file({"w": np.zeros(4, dtype=np.float32)}, str(repo / "model.safetensors"))
    git_env.git(repo, "add", "model.safetensors")
    git_env.git(repo, "commit", "-q", "-m", "model")
    blob = git_env.git(repo, "hash-object", "-w", "--stdin", input=b"deep\n").strip()
    deep = "d/" * DEPTH + "model.safetensors"
    git_env.git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{deep}")
    save_file({"w": np.ones(4, dtype=np.float32)}, str(repo / "model.safetensors"))
    git_env.git(repo, "add", "model.safetensors")
    git_env.git(repo, "commit", "-q", "-m", "deep")
    # Not checked out: pytest's clean-up of tmp_path (shutil.rmtree) recurses too.

    for command in (
        ["theta", "fetch"],
        ["theta", "fetch", "--all"],
        ["theta", "fsck"],
        ["theta", "migrate", "info", "--no-estimate"],
        ["theta-diff", "HEAD~1", "HEAD"],
    ):
        result = git_env.run("git", *command, cwd=repo, check=False, timeout=120)
        assert b"RecursionError" not in result.stderr, (command, result.stderr[-300:])
        assert result.returncode == 0, (command, result.stderr[-300:])
    # The diff found the model beside the deep tree.
    diff = git_env.git(repo, "theta-diff", "HEAD~1", "HEAD")
    assert "model.safetensors" in diff
