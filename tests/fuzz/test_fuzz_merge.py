"""Fuzz the merge driver with sides someone else committed.

Each side is a real file whose manifest may have been changed as a crafted
commit can change it (``crafted_sides.py``). Whatever the sides, the merge
ends in a result (merged, conflicted, or a problem for the file) or a named
error; never another exception, and never "the merged file does not hold the merged tensors (a bug:
please report it)", which is for the driver's own mistakes. Two such inputs
reached it before (docs/reliability.md, row 125).
"""

from __future__ import annotations

from crafted_sides import PATH, STORE, VERSIONS, crafted
from fuzz_settings import fuzz
from hypothesis import given
from hypothesis import strategies as st

from git_theta_filter.errors import ThetaError
from git_theta_filter.merge import Strategy, merge_manifests

OWN_BUG = "a bug: please report it"


@st.composite
def merges(draw: st.DrawFn) -> tuple[bytes, bytes, bytes, str]:
    format = draw(st.sampled_from(sorted(VERSIONS)))
    base, ours, theirs = (draw(crafted(format)) for _ in range(3))
    return base, ours, theirs, draw(st.sampled_from(["conflict", "ours", "theirs", "average"]))


@fuzz(ci_examples=150)
@given(merges())
def test_a_merge_of_crafted_sides_ends_in_a_result_or_a_named_error(
    case: tuple[bytes, bytes, bytes, str],
) -> None:
    base, ours, theirs, strategy = case
    try:
        merge_manifests(base, ours, theirs, STORE, Strategy.parse(strategy), PATH)
    except ThetaError as exc:
        assert OWN_BUG not in str(exc)
