"""examples/train_mnist.py: the commit-every-epoch workflow,
run for two epochs in a temporary repository.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from conftest import GitEnv

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_mnist.py"


def test_example_mnist_commits_each_epoch_and_restores_the_best(
    git_env: GitEnv, tmp_path: Path
) -> None:
    repo = tmp_path / "run"
    result = git_env.run(
        sys.executable,
        str(EXAMPLE),
        "--epochs",
        "2",
        "--repo",
        str(repo),
        "--data",
        str(tmp_path / "no-data"),
        cwd=tmp_path,
    )
    out = result.stdout.decode()
    assert "training on synthetic MNIST-shaped data" in out
    accuracies = [
        float(a) for a in re.findall(r"^epoch \d: train loss [\d.]+, val acc ([\d.]+)", out, re.M)
    ]
    assert len(accuracies) == 2
    assert git_env.git(repo, "log", "--format=%s").splitlines() == ["epoch 2", "epoch 1"]
    # theta-log lists both epochs with their metrics.
    log = out.split("$ git theta-log\n")[1]
    assert re.search(r"^\w{7} .* epoch 2 .*\b2\b", log, re.M) and re.search(
        r"^\w{7} .* epoch 1 ", log, re.M
    )
    best_epoch = 2 if accuracies[1] > accuracies[0] else 1
    best = git_env.git(repo, "rev-parse", f"HEAD~{2 - best_epoch}").strip()
    assert (
        f"restored model.pth from {best[:7]} (epoch {best_epoch}, val acc "
        f"{accuracies[best_epoch - 1]:.4f})" in out
    )
    # The restored file is that commit's, staged; nothing else differs.
    assert git_env.git(repo, "rev-parse", ":model.pth") == git_env.git(
        repo, "rev-parse", f"{best}:model.pth"
    )
    assert git_env.git(repo, "diff", "--quiet", "--", "model.pth") == ""
    git_env.theta(repo, "fsck")
