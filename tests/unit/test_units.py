"""Sizes and numbers for people and scripts (units.py)."""

from __future__ import annotations

import math

import pytest

from git_theta_filter.units import human_bytes, json_number


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 KB"),
        (2_700_000_000, "2.7 GB"),
        (10**16, "10000.0 TB"),
    ],
)
def test_human_bytes_uses_decimal_units(count: int, shown: str) -> None:
    assert human_bytes(count) == shown


def test_json_number_spells_non_finite_floats_and_keeps_the_rest() -> None:
    assert [json_number(v) for v in (math.nan, math.inf, -math.inf)] == ["nan", "inf", "-inf"]
    assert [json_number(v) for v in (1.5, 3, True, None)] == [1.5, 3, True, None]
