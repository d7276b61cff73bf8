"""``git theta migrate info|import|export``: move history's model files into theta and back."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..gitrepo import GitRepo
from ..migrate import (
    LFS,
    RAW,
    THETA,
    MigrateResult,
    default_patterns,
    migrate_export,
    migrate_import,
    resolve_refs,
    scan_history,
    stderr_progress,
    summarize,
)
from ..units import human_bytes
from ._output import print_table

_GUESSED = ["*.pth", "*.pt", "*.bin", "*.ckpt", "*.safetensors"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "migrate",
        help="convert history's model files to theta, or back (like git lfs migrate)",
        description="Rewrite history so that model files committed raw or with git-lfs become "
        "theta manifests (import), or the reverse (export); or report what is there (info). "
        "By default the current branch's history is used. Import and export rewrite commits: "
        "see docs/migrate.md for checking the result, pushing it, and what collaborators do.",
    )
    modes = p.add_subparsers(dest="mode", metavar="<mode>")
    for name, summary in (
        ("info", "count the versions of matching files: raw, git-lfs, theta; and their sizes"),
        ("import", "rewrite raw files and git-lfs pointers as theta manifests"),
        ("export", "rewrite theta manifests as raw files (--to=raw) or git-lfs (--to=lfs)"),
    ):
        m = modes.add_parser(name, help=summary, description=summary)
        m.add_argument(
            "--include",
            "-I",
            action="append",
            default=[],
            metavar="<patterns>",
            help="comma-separated .gitattributes patterns of the files (repeatable); "
            "by default the patterns .gitattributes routes through "
            + ("theta" if name == "export" else "theta or git-lfs"),
        )
        m.add_argument(
            "--everything",
            action="store_true",
            help="every local branch and tag (remote-tracking refs are not rewritten)",
        )
        m.add_argument("refs", nargs="*", help="branches or tags (default: the current branch)")
        if name == "info":
            m.add_argument(
                "--no-estimate",
                action="store_true",
                help="skip cleaning every version to estimate what theta would store",
            )
        if name == "export":
            m.add_argument("--to", choices=[RAW, LFS], required=True, help="what to export to")
        m.set_defaults(run=globals()[f"run_{name}"])
    p.set_defaults(run=lambda args: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _patterns(args: argparse.Namespace, repo: GitRepo, filters: list[str]) -> list[str]:
    patterns = [p.strip() for value in args.include for p in value.split(",") if p.strip()]
    return patterns or default_patterns(repo, filters)


def run_info(args: argparse.Namespace) -> int:
    from ..blob_stream import BlobStreamer

    repo = GitRepo.discover()
    guessed = not _patterns(args, repo, ["theta", "lfs"])
    patterns = _patterns(args, repo, ["theta", "lfs"]) or _GUESSED
    refs = resolve_refs(repo, args.refs, args.everything)
    with BlobStreamer(repo.git_dir) as blobs:
        scan = scan_history(repo, refs, patterns, blobs)
        summaries = summarize(repo, scan, patterns, blobs, not args.no_estimate, stderr_progress)
    print(f"{scan.commits} commits of {', '.join(refs)}")
    rows = []
    for s in summaries:
        if guessed and not any(s.counts.values()):
            continue  # a guessed pattern that matches nothing
        rows.append(
            [
                s.pattern,
                f"{s.counts[RAW]} ({human_bytes(s.sizes[RAW])})",
                f"{s.counts[LFS]} ({human_bytes(s.sizes[LFS])})"
                + (f", {s.lfs_missing} not local" if s.lfs_missing else ""),
                f"{s.counts[THETA]} ({human_bytes(s.sizes[THETA])})",
                "-" if s.theta_bytes is None else human_bytes(s.theta_bytes),
            ]
        )
    print_table(
        ["pattern", "raw", "git-lfs", "theta", "theta would store"], rows, right=(1, 2, 3, 4)
    )
    return 0


def run_import(args: argparse.Namespace) -> int:
    repo = GitRepo.discover()
    patterns = _patterns(args, repo, ["theta", "lfs"])
    if not patterns:
        return _no_patterns("import")
    refs = resolve_refs(repo, args.refs, args.everything)
    result = migrate_import(repo, patterns, refs, stderr_progress)
    _report(result, f"{result.converted} versions stored as theta manifests", patterns)
    return 0


def run_export(args: argparse.Namespace) -> int:
    repo = GitRepo.discover()
    patterns = _patterns(args, repo, ["theta"])
    if not patterns:
        return _no_patterns("export")
    refs = resolve_refs(repo, args.refs, args.everything)
    result = migrate_export(repo, patterns, refs, args.to, stderr_progress)
    kind = "git-lfs objects" if args.to == LFS else "plain files"
    _report(result, f"{result.converted} versions restored as {kind}", patterns)
    return 0


def _no_patterns(mode: str) -> int:
    print(
        f"git-theta: error: no files to {mode}: name them with --include, e.g. "
        f"git theta migrate {mode} --include='*.pth'",
        file=sys.stderr,
    )
    return 2


def _report(result: MigrateResult, what: str, patterns: list[str]) -> None:
    """The old -> new commit map on stdout; what happened and what to do next on stderr."""
    changed = {old: new for old, new in result.commit_map.items() if old != new}
    for old, new in changed.items():
        print(f"{old} {new}")
    branches = " ".join(shlex.quote(ref.removeprefix("refs/heads/")) for ref in result.refs)
    print(
        f"git-theta: rewrote {len(changed)} commits of {', '.join(result.refs)}; {what} "
        f"({', '.join(patterns)}).\n"
        "git-theta: check the result (git theta-log, git status), then reclaim the space of "
        "the old versions:\n"
        "  git reflog expire --expire=now --all && git gc --prune=now && "
        "git theta gc --prune=now\n"
        "git-theta: the rewritten history replaces the old one on a remote only by force, and "
        "collaborators must re-clone or reset (docs/migrate.md):\n"
        f"  git push --force-with-lease origin {branches}",
        file=sys.stderr,
    )
