"""``git-remote-theta``: ``theta::<url>`` remotes, whose push and fetch move tensor objects too.

Git's contract (gitremote-helpers(7)). For a remote URL ``theta::<url>`` git
runs ``git-remote-theta <remote name or URL> <url>`` with ``GIT_DIR`` set,
writes commands to our stdin one per line, and reads the answers on stdout:

* ``capabilities``: the capabilities, one per line, then a blank line.
* ``list`` and ``list for-push``: one ``<sha> <refname>`` line per ref
  (``@<target> HEAD`` for a symbolic HEAD), then a blank line.
* ``option <name> <value>``: ``ok``, ``unsupported`` or ``error <message>``.
* ``fetch <sha> <refname>``: a batch of such lines ends with a blank line. The
  objects must be in the local repository when we answer with a blank line.
* ``push [+]<src>:<dst>``: a batch of such lines ends with a blank line. Each is
  answered ``ok <dst>`` or ``error <dst> <why>``, then a blank line. An empty
  ``<src>`` deletes ``<dst>``; ``+`` forces.
* A blank line, or the end of input, ends the session.

``<url>`` is an ordinary git URL (a path, ``file://``, ssh or https). Refs move
with ``git ls-remote``/``fetch``/``push`` against it; tensor objects move
through the store it resolves to (``remotes.py``): pushes upload first
and only then send refs, and fetches prefetch the objects of the fetched
commits in parallel. Nothing but protocol answers may reach stdout.

git-lfs cannot read a ``theta::`` URL, so a configured remote without an
``lfsurl`` gets the inner URL's LFS endpoint (:mod:`lfs_interop`) when the
helper starts, before a clone's checkout needs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import BinaryIO

from .cli._errors import format_error, run_reporting
from .errors import ThetaError
from .gitrepo import GitError, GitRepo, git_process, refuse_option_like
from .history import manifests_in_blobs, objects_needed, open_pygit2
from .lfs_interop import record_lfs_url
from .object_sizes import object_size_candidates
from .prepush import ZERO_SHA, RefUpdate, upload_for_push
from .progress import Progress, QuietProgress
from .remotes import HELPER_PREFIX, resolve_store, transfer_workers
from .store.base import StoreError
from .store.transfer import TransferFailedError, download

__all__ = ["HelperRecursionError", "HelperProtocolError", "RemoteHelper", "main", "GUARD_VARIABLE"]

CAPABILITIES = ("fetch", "push", "option")
# Set for everything we start: a helper that finds it set was started by
# ourselves (an inner URL that leads back to theta::, e.g. via insteadOf).
GUARD_VARIABLE = "GIT_THETA_REMOTE_HELPER"


class HelperRecursionError(ThetaError):
    def __init__(self, url: str) -> None:
        super().__init__(
            f"git-remote-theta: the inner URL {url!r} leads back to git-remote-theta",
            hint="the part after theta:: must be a plain git URL (check url.*.insteadOf)",
        )
        self.url = url


class HelperProtocolError(ThetaError):
    def __init__(self, line: str) -> None:
        super().__init__(f"git-remote-theta: unexpected command {line!r} from git")
        self.line = line


def _one_line(text: str) -> str:
    return " ".join(text.split())


class RemoteHelper:
    """One session with git: reads commands from ``stdin``, answers on ``stdout``."""

    def __init__(
        self, repo: GitRepo, remote: str, url: str, stdin: BinaryIO, stdout: BinaryIO
    ) -> None:
        self.repo = repo
        self.remote = remote
        self.url = url
        self._stdin = stdin
        self._stdout = stdout
        self._remote_refs: dict[str, str] = {}
        self.verbosity = 1
        self.progress = False
        self.dry_run = False

    # -- the session ---------------------------------------------------------
    def serve(self) -> None:
        while (line := self._read_line()) is not None and line:
            if line == "capabilities":
                self._answer(list(CAPABILITIES))
            elif line in ("list", "list for-push"):
                self._answer(self._list())
            elif line.startswith("option "):
                self._answer([self._option(*line[len("option ") :].partition(" ")[::2])], end=False)
            elif line.startswith("fetch "):
                self._fetch(self._batch(line, "fetch "))
                self._answer([])
            elif line.startswith("push "):
                self._answer(self._push(self._batch(line, "push ")))
            else:
                raise HelperProtocolError(line)

    def _read_line(self) -> str | None:
        raw = self._stdin.readline()
        if not raw:
            return None
        return raw.decode("utf-8", "surrogateescape").rstrip("\n")

    def _batch(self, first: str, prefix: str) -> list[str]:
        """The arguments of a batch of ``prefix`` lines, up to the blank line that ends it."""
        batch = [first[len(prefix) :]]
        while (line := self._read_line()) and line.startswith(prefix):
            batch.append(line[len(prefix) :])
        return batch

    def _answer(self, lines: list[str], *, end: bool = True) -> None:
        text = "".join(f"{line}\n" for line in lines) + ("\n" if end else "")
        self._stdout.write(text.encode("utf-8", "surrogateescape"))
        self._stdout.flush()

    def _git(
        self, *args: str, operands: list[str], input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """git with its stdout captured (stdout is ours), its stderr shown when verbose."""
        return git_process(
            args,
            operands=operands,
            cwd=self.repo.cwd,
            input=input,
            stderr="show" if self.verbosity > 0 else "discard",
        )

    # -- commands ------------------------------------------------------------
    def _list(self) -> list[str]:
        listing = self.repo.git("ls-remote", "--symref", operands=[self.url])
        symrefs: dict[str, str] = {}
        self._remote_refs = {}
        for line in listing.splitlines():
            value, _, name = line.partition("\t")
            if value.startswith("ref: "):
                symrefs[name] = value[len("ref: ") :]
            elif not name.endswith("^{}"):
                self._remote_refs[name] = value
        lines = []
        for name, sha in self._remote_refs.items():
            target = symrefs.get(name)
            # A symbolic ref is announced as such only when its target is listed too.
            lines.append(f"@{target} {name}" if target in self._remote_refs else f"{sha} {name}")
        return lines

    def _option(self, name: str, value: str) -> str:
        if name == "verbosity" and value.lstrip("-").isdigit():
            self.verbosity = int(value)
        elif name == "progress" and value in ("true", "false"):
            self.progress = value == "true"
        elif name == "dry-run" and value in ("true", "false"):
            self.dry_run = value == "true"
        else:
            return "unsupported"
        return "ok"

    def _fetch(self, wanted: list[str]) -> None:
        shas = list(dict.fromkeys(item.split(" ", 1)[0] for item in wanted))
        # By id, not by name: exactly the commits we listed, even if a ref moved since.
        result = self._git(
            "fetch",
            "--progress" if self.progress else "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--stdin",
            operands=[self.url],
            input="\n".join(shas).encode(),
        )
        if result.returncode != 0:
            raise GitError(["fetch", self.url], f"could not fetch from {self.url}")
        self._prefetch(shas)

    def _prefetch(self, shas: list[str]) -> None:
        """Download the objects of the manifests that the fetched commits brought in.

        Failures are warnings: the refs are fetched, and a checkout that still
        lacks an object fetches it on demand or says what is missing.
        """
        # What the fetched commits bring that no ref had: `--not --all --not <shas>`.
        listing = self.repo.git("rev-list", "--objects", "--not", "--all", "--not", revisions=shas)
        blob_ids = [line.split(" ", 1)[0] for line in listing.splitlines() if " " in line]
        manifests = manifests_in_blobs(open_pygit2(self.repo), blob_ids)
        wanted = objects_needed(manifests)
        if not wanted:
            return
        try:
            store = resolve_store(self.repo, self.remote, self.url, revision=shas[0])
            if store is None:
                print(
                    f"git-theta: warning: no object store for {self.url}; "
                    "tensor objects were not fetched",
                    file=sys.stderr,
                )
                return
            download(
                self.repo.store(),
                store,
                wanted,
                workers=transfer_workers(self.repo),
                progress=Progress if self.verbosity > 0 else QuietProgress,
                object_sizes=object_size_candidates(manifests),
            )
        except (StoreError, TransferFailedError) as exc:
            print(f"git-theta: warning: tensor objects were not prefetched: {exc}", file=sys.stderr)

    def _push(self, specs: list[str]) -> list[str]:
        pushes = []  # (refspec, dst)
        updates = []
        for spec in specs:
            src, _, dst = spec.lstrip("+").partition(":")
            local_sha = (
                self.repo.git("rev-parse", "--verify", revisions=[src]).strip() if src else ZERO_SHA
            )
            pushes.append((spec, dst))
            updates.append(RefUpdate(src, local_sha, dst, self._remote_refs.get(dst, ZERO_SHA)))
        if not self.dry_run:
            try:
                # Objects first: refs must never name tensors the store lacks.
                upload_for_push(
                    self.repo,
                    self.remote,
                    self.url,
                    updates,
                    require_store=True,
                    progress=Progress if self.verbosity > 0 else QuietProgress,
                )
            except ThetaError as exc:
                why = _one_line(format_error(exc).removeprefix("git-theta: error: "))
                return [f"error {dst} {why}" for _, dst in pushes]
        # Not --quiet: that would drop the porcelain status lines we parse.
        # Our caller already ran the pre-push hook; the inner push must not run it again.
        result = self._git(
            "push",
            "--porcelain",
            "--no-verify",
            "--dry-run" if self.dry_run else "--no-dry-run",
            "--progress" if self.progress else "--no-progress",
            operands=[self.url, *(spec for spec, _ in pushes)],
        )
        statuses = _porcelain_statuses(result.stdout.decode("utf-8", "replace"))
        answers = []
        for _, dst in pushes:
            flag, why = statuses.get(dst, ("!", f"push to {self.url} failed"))
            answers.append(f"error {dst} {why}" if flag == "!" else f"ok {dst}")
        return answers


def _porcelain_statuses(output: str) -> dict[str, tuple[str, str]]:
    """``git push --porcelain`` lines
    (``<flag> TAB <src>:<dst> TAB <summary> [(<reason>)]``) by dst.
    """
    statuses = {}
    for line in output.splitlines():
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        flag, refs, summary = fields[0], fields[1], fields[2]
        dst = refs.rpartition(":")[2]
        reason = summary[summary.rfind("(") + 1 : -1] if summary.endswith(")") else summary
        statuses[dst] = (flag, _one_line(reason))
    return statuses


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or len(args) > 2:
        print(
            "usage: git-remote-theta <remote> [<url>] (run by git for theta::<url> remotes)",
            file=sys.stderr,
        )
        return 2
    remote = args[0]
    url = args[1] if len(args) == 2 else remote.removeprefix(HELPER_PREFIX)
    return run_reporting(lambda: _serve(remote, url))


def _serve(remote: str, url: str) -> int:
    if os.environ.get(GUARD_VARIABLE) or url.startswith(HELPER_PREFIX):
        raise HelperRecursionError(url)
    # Git hands both to us verbatim from a remote's config or the command line.
    refuse_option_like(remote, "remote name")
    refuse_option_like(url, "URL")
    os.environ[GUARD_VARIABLE] = url
    repo = GitRepo.discover()
    # git-lfs cannot read a theta:: URL: tell it where the LFS objects are.
    record_lfs_url(repo, remote, url)
    RemoteHelper(repo, remote, url, sys.stdin.buffer, sys.stdout.buffer).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
