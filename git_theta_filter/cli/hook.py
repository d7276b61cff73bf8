"""``git theta hook <name>``: what the scripts in hooks/ run."""

from __future__ import annotations

import argparse
import sys

from ..gitrepo import GitRepo
from ..hooks import ALWAYS, HOOK_NAMES, run_after_ours, run_hook_script


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "hook",
        help="run one of our git hooks (called by the scripts in hooks/)",
        description="pre-push: upload the tensor objects behind the pushed commits to the remote's "
        "object store before git sends the refs, refusing the push if they are missing locally or "
        "the upload fails. Every hook then does git-lfs's work for that hook when the repository "
        "uses Git LFS (unless the hook ours replaced does it), and runs the hook ours replaced.",
    )
    p.add_argument("name", choices=HOOK_NAMES)
    p.add_argument("hook_args", nargs="*", help="the arguments git gave the hook")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.name != ALWAYS:
        # The post-* hooks are shell scripts, so that a commit or checkout starts no
        # Python; a hook of the user's that calls us gets the same script.
        return run_hook_script(args.name, args.hook_args)
    repo = GitRepo.discover()
    stdin = sys.stdin.buffer.read()
    _upload(repo, args.hook_args, stdin)
    return run_after_ours(repo, args.name, args.hook_args, stdin)


def _upload(repo: GitRepo, hook_args: list[str], stdin: bytes) -> None:
    """Our pre-push work; imported here so the post-* hooks start fast."""
    from ..prepush import ObjectsMissingLocallyError, parse_ref_updates, upload_for_push
    from ..remotes import HELPER_PREFIX

    remote = hook_args[0] if hook_args else "origin"
    remote_url = hook_args[1] if len(hook_args) > 1 else None
    try:
        upload = upload_for_push(repo, remote, remote_url, parse_ref_updates(stdin))
    except ObjectsMissingLocallyError as exc:
        for oid in exc.oids[:10]:
            print(f"git-theta: missing tensor object {oid}", file=sys.stderr)
        raise
    if (
        upload.wanted
        and upload.store_url is None
        and not (remote_url or "").startswith(HELPER_PREFIX)
    ):
        print(
            f"git-theta: warning: remote {remote!r} has no object store, so the {upload.wanted} "
            "tensor object(s) behind this push stay local; set `git config "
            f"theta.remote.{remote}.url` (see docs/remotes.md)",
            file=sys.stderr,
        )
