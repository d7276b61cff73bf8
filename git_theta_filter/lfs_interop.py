"""Living beside git-lfs in one repository: its hook work, and its endpoint for ``theta::``.

git-lfs installs four hooks (``pre-push``, ``post-checkout``, ``post-commit``,
``post-merge``), each of which runs ``git lfs <hook> "$@"``. It refuses to
install any of them once a hook it did not write is in place, and it writes
them in that order, stopping at the first refusal. Whichever of git-lfs and
theta checks out a file first therefore decides whose hooks a clone gets. So
our hooks do git-lfs's work themselves when the repository uses Git LFS,
unless the hook we replaced already does it.

A repository uses Git LFS when ``filter.lfs.*`` is configured (``git lfs
install`` writes it), or when its top-level ``.gitattributes`` or
``info/attributes`` routes files through ``filter=lfs``. A ``.gitattributes``
that a commit made a symbolic link is not read (git ignores it too).

``theta::<url>`` remotes: git-lfs derives a remote's LFS endpoint from its URL
and cannot read ``theta::``. :func:`lfs_endpoint` gives the endpoint git-lfs
would derive from the inner URL; ``git-remote-theta`` records it as the
remote's ``lfsurl`` unless the user set one.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ThetaError
from .gitrepo import GitRepo, git_process

__all__ = [
    "LFS_HOOK_NAMES",
    "GitLfsNotFoundError",
    "lfs_configured",
    "lfs_in_use",
    "git_lfs_available",
    "does_lfs_hook_work",
    "run_lfs_hook",
    "lfs_endpoint",
    "record_lfs_url",
]

LFS_HOOK_NAMES = ("pre-push", "post-checkout", "post-commit", "post-merge")

_LFS_ATTRIBUTE = re.compile(rb"(^|\s)filter=lfs(\s|$)", re.MULTILINE)


class GitLfsNotFoundError(ThetaError):
    """The repository uses Git LFS, but ``git-lfs`` is not on PATH to do its hook's work."""

    exit_code = 2

    def __init__(self, hook: str) -> None:
        super().__init__(
            f"{hook}: this repository uses Git LFS, but 'git-lfs' is not on PATH",
            hint="install git-lfs (https://git-lfs.com), or remove filter=lfs from .gitattributes "
            "and `git config --unset-all filter.lfs.process`",
        )
        self.hook = hook


def lfs_configured(repo: GitRepo) -> bool:
    """Whether ``filter.lfs.*`` is configured: the user installed git-lfs for this repository."""
    return bool(repo.git("config", "--get-regexp", r"^filter\.lfs\.", check=False).strip())


def lfs_in_use(repo: GitRepo) -> bool:
    """Whether git-lfs's hooks have work to do here (see the module docstring)."""
    if lfs_configured(repo):
        return True
    try:
        if _LFS_ATTRIBUTE.search((repo.common_dir / "info" / "attributes").read_bytes()):
            return True
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        pass
    if repo.worktree is None:
        return False
    # Imported here, as in lfs_endpoint: most hooks checks end above.
    from .attributes import AttributesFileRefusedError, read_worktree_attributes

    try:
        committed = read_worktree_attributes(repo.worktree)
    except AttributesFileRefusedError:
        return False  # a symbolic link git ignores, or a file it would ignore
    return committed is not None and _LFS_ATTRIBUTE.search(committed) is not None


def git_lfs_available() -> bool:
    return shutil.which("git-lfs") is not None


def does_lfs_hook_work(hook_file: Path, name: str) -> bool:
    """Whether the hook file runs ``git lfs <name>`` (git-lfs's own hook, or one that
    calls it)."""
    try:
        text = hook_file.read_text(errors="replace")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False
    return re.search(rf"\bgit[ -]lfs\s+{re.escape(name)}\b", text) is not None


def run_lfs_hook(repo: GitRepo, name: str, args: list[str], stdin: bytes) -> int:
    """Run ``git lfs <name> <args>`` as git-lfs's own hook would; its exit code.

    For a ``theta::`` remote without an ``lfsurl``, git-lfs is told the inner
    URL's endpoint for this one run (git-lfs reads git config through git,
    which takes it from ``GIT_CONFIG_COUNT``).

    Without ``git-lfs`` on PATH, a push is refused where the user configured
    git-lfs (as git-lfs's own hook would refuse it); where only a committed
    ``.gitattributes`` names it, this clone never made LFS objects to send,
    so the hook goes on with a warning rather than failing every checkout.
    """
    if not git_lfs_available():
        if name == "pre-push" and lfs_configured(repo):
            raise GitLfsNotFoundError(name)
        print(
            f"git-theta: warning: {name}: this repository uses Git LFS, but 'git-lfs' is not "
            "on PATH; its hook work is skipped (install git-lfs: https://git-lfs.com)",
            file=sys.stderr,
        )
        return 0
    env = dict(os.environ)
    if name == "pre-push" and len(args) >= 2:
        remote, url = args[0], args[1]
        if url.startswith("theta::") and not _configured_lfs_url(repo, remote):
            endpoint = lfs_endpoint(url.removeprefix("theta::"), repo.cwd)
            if endpoint is not None:
                _add_config(env, "lfs.url", endpoint)
    if name not in LFS_HOOK_NAMES:  # a name of ours, never a value from outside
        raise ValueError(f"not a git-lfs hook: {name!r}")
    return git_process(
        ["lfs", name],
        operands=args,
        input=stdin,
        cwd=repo.cwd,
        env=env,
        stdout="show",
        stderr="show",
    ).returncode


def _configured_lfs_url(repo: GitRepo, remote: str) -> str | None:
    return repo.config_get(f"remote.{remote}.lfsurl") or repo.config_get("lfs.url")


def _add_config(env: dict[str, str], key: str, value: str) -> None:
    count = int(env.get("GIT_CONFIG_COUNT", "0") or "0")
    env[f"GIT_CONFIG_KEY_{count}"] = key
    env[f"GIT_CONFIG_VALUE_{count}"] = value
    env["GIT_CONFIG_COUNT"] = str(count + 1)


def lfs_endpoint(url: str, base: Path) -> str | None:
    """The LFS endpoint git-lfs derives from the git URL ``url``; None when it has none.

    * a local path or ``file://`` URL: ``file://<absolute path>`` (git-lfs moves
      objects to ``<repo>/lfs/objects`` with no server);
    * ssh (``ssh://`` or ``user@host:path``): the URL itself, so git-lfs asks the
      server over ssh (``git-lfs-authenticate``) as it does for an ssh remote;
    * ``http(s)://host/path`` (and ``git://``): ``…/path.git/info/lfs``, as
      :func:`store.lfs_endpoint.endpoint_from_remote_url` derives it.

    Relative paths are taken from ``base``.
    """
    # Imported here: the hooks check at every filter start needs none of it.
    from .store.lfs_endpoint import endpoint_from_remote_url, scp_like_parts

    if url.startswith("ssh://") or scp_like_parts(url) is not None:
        return url
    if url.startswith("file://"):
        return url if urlsplit(url).netloc in ("", "localhost") else None
    if "://" not in url and "::" not in url:
        return Path(os.path.abspath(base / Path(url).expanduser())).as_uri()
    endpoint = endpoint_from_remote_url(url)
    return endpoint.url if endpoint is not None and endpoint.ssh is None else None


def record_lfs_url(repo: GitRepo, remote: str, url: str) -> str | None:
    """Set ``remote.<remote>.lfsurl`` to the inner URL's endpoint, for a configured
    ``theta::`` remote that has none (nor ``lfs.url``); the value set, or None.

    git-remote-theta calls this when it starts, so a clone's checkout (git-lfs's
    smudge) and later pushes reach the LFS objects beside the git repository.
    """
    configured = repo.config_get(f"remote.{remote}.url")
    if configured is None or not configured.startswith("theta::"):
        return None
    if _configured_lfs_url(repo, remote):
        return None
    endpoint = lfs_endpoint(url, repo.cwd)
    if endpoint is not None:
        repo.git("config", operands=[f"remote.{remote}.lfsurl", endpoint])
    return endpoint
