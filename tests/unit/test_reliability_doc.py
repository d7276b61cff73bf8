"""docs/reliability.md stays true: its tests exist, it names every hostile/fault/fuzz test,
its counts add up.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
# Every test in these folders must be named in the table.
COVERED_FOLDERS = ("tests/hostile", "tests/faults", "tests/fuzz")

ROW = re.compile(r"^\| (\d+) \|")
NODE = re.compile(r"`(tests/[^`]+\.py::[^`]+)`")
COUNTS = re.compile(r"\*\*(\d+) cases, proven by (\d+) tests\.\*\*")


def table_rows(text: str) -> dict[int, list[str]]:
    """Row number -> the test references in that row."""
    rows = {}
    for line in text.splitlines():
        if match := ROW.match(line):
            rows[int(match.group(1))] = NODE.findall(line)
    return rows


def collected(paths: list[str]) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {line for line in result.stdout.splitlines() if "::" in line}


def covered_by(reference: str, node_ids: set[str]) -> set[str]:
    """The collected items a reference stands for: itself,
    or every case of a parametrized function.
    """
    if "[" in reference:
        return {reference} & node_ids
    return {node for node in node_ids if node == reference or node.startswith(reference + "[")}


def test_reliability_table_names_existing_tests_and_every_hostile_fault_and_fuzz_test() -> None:
    text = DOC.read_text()
    rows = table_rows(text)
    assert sorted(rows) == list(range(1, len(rows) + 1)), "rows must be numbered 1..n in order"
    references = [ref for refs in rows.values() for ref in refs]
    assert all(rows.values()), f"rows without a test: {[n for n, refs in rows.items() if not refs]}"

    files = sorted({ref.partition("::")[0] for ref in references})
    node_ids = collected(sorted(set(files) | set(COVERED_FOLDERS)))
    missing = [ref for ref in references if not covered_by(ref, node_ids)]
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"

    proven = set().union(*(covered_by(ref, node_ids) for ref in references))
    unlisted = sorted(n for n in node_ids if n.startswith(COVERED_FOLDERS) and n not in proven)
    assert not unlisted, f"tests missing from docs/reliability.md: {unlisted}"

    counts = COUNTS.search(text)
    assert counts, "the summary line with the counts is missing"
    assert (int(counts.group(1)), int(counts.group(2))) == (len(rows), len(proven)), (
        f"the summary should say **{len(rows)} cases, proven by {len(proven)} tests.**"
    )
