"""The pre-push hook's work: the tensor objects behind the commits being pushed.

Git's contract (githooks(5), pre-push): the hook is called with the remote's
name and URL as arguments, and reads lines on standard input::

    <local ref> SP <local sha> SP <remote ref> SP <remote sha> LF

A local sha of all zeros is a deletion. A non-zero exit stops the push before
any ref is updated.
"""

from __future__ import annotations

from dataclasses import dataclass

from .gitrepo import GitRepo
from .history import manifests_in_blobs, open_pygit2

__all__ = ["RefUpdate", "parse_ref_updates", "objects_to_push"]


@dataclass(frozen=True)
class RefUpdate:
    local_ref: str
    local_sha: str
    remote_ref: str
    remote_sha: str

    @property
    def is_delete(self) -> bool:
        return set(self.local_sha) == {"0"}


def parse_ref_updates(stdin: bytes) -> list[RefUpdate]:
    updates = []
    for line in stdin.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) == 4:
            updates.append(RefUpdate(*parts))
    return updates


def objects_to_push(repo: GitRepo, remote: str, updates: list[RefUpdate]) -> dict[str, int]:
    """Object ids (with payload lengths) of the manifests in ``rev-list --objects <local> ^<remote>``."""
    git = open_pygit2(repo)
    wanted: dict[str, int] = {}
    for update in updates:
        if update.is_delete:
            continue
        exclude = [f"^{update.remote_sha}"] if update.remote_sha in git and not set(update.remote_sha) == {"0"} else []
        if not exclude:
            exclude = ["--not", f"--remotes={remote}"]
        listing = repo.git("rev-list", "--objects", update.local_sha, *exclude)
        blob_ids = [line.split(" ", 1)[0] for line in listing.splitlines() if " " in line]
        for manifest in manifests_in_blobs(git, blob_ids):
            wanted.update(manifest.payload_lengths())
    return wanted
