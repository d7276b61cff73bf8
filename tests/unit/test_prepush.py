"""prepush.py: git's pre-push hook input, as githooks(5) defines it."""

from __future__ import annotations

from git_theta_filter.prepush import RefUpdate, parse_ref_updates

ZERO = "0" * 40
A = "a" * 40
B = "b" * 40


def test_parse_ref_updates_reads_one_update_a_line() -> None:
    # <local ref> SP <local sha> SP <remote ref> SP <remote sha> LF
    stdin = f"refs/heads/main {A} refs/heads/main {B}\nrefs/tags/v1 {B} refs/tags/v1 {ZERO}\n"
    assert parse_ref_updates(stdin.encode()) == [
        RefUpdate("refs/heads/main", A, "refs/heads/main", B),
        RefUpdate("refs/tags/v1", B, "refs/tags/v1", ZERO),
    ]


def test_parse_ref_updates_skips_what_is_not_an_update() -> None:
    assert parse_ref_updates(b"") == []
    assert parse_ref_updates(f"\nnot an update\nrefs/heads/x {A} refs/heads/x\n".encode()) == []


def test_a_delete_pushes_the_zero_id() -> None:
    (delete,) = parse_ref_updates(f"(delete) {ZERO} refs/heads/old {A}\n".encode())
    assert delete.is_delete
    assert not RefUpdate("refs/heads/main", A, "refs/heads/main", ZERO).is_delete
    # sha256 repositories push 64 zeros.
    assert RefUpdate("(delete)", "0" * 64, "refs/heads/old", "c" * 64).is_delete
