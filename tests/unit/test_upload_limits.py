"""upload_limits.py: an object over a store's size limit is refused before any upload, by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import save

from git_theta_filter.gitrepo import GitRepo
from git_theta_filter.store.remote import open_store
from git_theta_filter.upload_limits import ObjectTooLargeError, refuse_oversized_objects


@pytest.fixture
def committed(git_env, repo: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[GitRepo, str]:
    """A commit of model.pth with a 4000-byte tensor `big` and an 8-byte `small`."""
    for key in ("HOME", "XDG_CONFIG_HOME", "GIT_CONFIG_NOSYSTEM", "PATH"):
        monkeypatch.setenv(key, git_env.env[key])
    save({"big": torch.ones(1000), "small": torch.ones(2)}, repo / "model.pth")
    git_env.git(repo, "add", "model.pth")
    git_env.git(repo, "commit", "-qm", "model")
    return GitRepo.discover(repo), git_env.git(repo, "rev-parse", "HEAD").strip()


def test_the_largest_object_over_the_limit_is_refused_naming_its_tensor(
    committed, tmp_path: Path
) -> None:
    repo, commit = committed
    store = open_store(str(tmp_path / "store"), base=tmp_path)
    store.max_object_size = 1000
    oids = list(repo.store().iter_oids())
    with pytest.raises(ObjectTooLargeError) as caught:
        refuse_oversized_objects(repo, store, oids, [commit])
    error = caught.value
    assert (error.path, error.tensor, error.limit) == ("model.pth", "big", 1000)
    assert error.size > 4000 and "theta.lfs.maxObjectSize" in str(error)
    assert list(store.list()) == [], "refused before anything moved"


def test_no_limit_or_a_limit_above_every_object_lets_the_upload_go(
    committed, tmp_path: Path
) -> None:
    repo, commit = committed
    store = open_store(str(tmp_path / "store"), base=tmp_path)
    oids = list(repo.store().iter_oids())
    refuse_oversized_objects(repo, store, oids, [commit])
    store.max_object_size = 1 << 20
    refuse_oversized_objects(repo, store, oids, [commit])
