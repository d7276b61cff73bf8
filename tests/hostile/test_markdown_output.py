"""`git theta-diff --md`: a table a user pastes into a pull request, with names from commits.

A file name, a tensor name or a metric name can hold Markdown: a link, an
image, HTML, a backtick that ends the code span around it, a newline that
starts a new block. Each is shown as text: in a code span whose fence is
longer than any run of backticks in the name, on the line it belongs to.
"""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import save_file

LINK = "[Approve](https:x.invalid)"
MODEL = f"m\n\n{LINK}\n.safetensors"
TENSOR = f"w`{LINK}`"
METRIC = "<img src=https://x.invalid/b>"


def test_theta_diff_md_shows_names_from_commits_as_text(git_env, tmp_path):
    repo = tmp_path / "repo"
    git_env.run("git", "init", "-q", str(repo))
    git_env.theta(repo, "track", "*.safetensors")
    for version in (1, 2):
        save_file({TENSOR: np.full((2,), version, dtype=np.float32)}, str(repo / MODEL))
        (repo / f"{MODEL}.metrics.json").write_text(json.dumps({METRIC: version}))
        git_env.git(repo, "add", ".")
        git_env.git(repo, "commit", "-q", "-m", f"v{version}")
    text = git_env.theta(repo, "diff", "--md", "HEAD~1", "HEAD").stdout.decode()
    heading = [line for line in text.splitlines() if line.startswith("###")]
    assert len(heading) == 1, text
    assert heading[0].startswith("### `m\\n\\n[Approve](https:x.invalid)\\n.safetensors` (HEAD~1")
    assert not any(line.startswith(LINK) for line in text.splitlines()), text
    assert f"| modified | `` {TENSOR} `` |" in text, text
    assert f"| `{METRIC}` | 1 | 2 |" in text, text
