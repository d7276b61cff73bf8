"""Fuzz what reads a manifest someone else committed: the smudge, and the tensor
statistics behind ``git theta-diff`` and ``theta-log``.

The manifests are real versions of a file, changed as a crafted commit can
change them (``crafted_sides.py``). A smudge either writes the very bytes whose
sha256 the manifest gives or fails with a named error; a diff of two such
versions either has its numbers or fails with a named error. No other
exception, and no wrong bytes written as the model.
"""

from __future__ import annotations

import hashlib

from crafted_sides import PATH, STORE, VERSIONS, crafted
from fuzz_settings import fuzz
from hypothesis import given
from hypothesis import strategies as st

from git_theta_filter.errors import ThetaError
from git_theta_filter.manifest import Manifest
from git_theta_filter.smudge import prepare_smudge
from git_theta_filter.stats import Statistician
from git_theta_filter.stats_cache import StatsCache
from git_theta_filter.tensor_diff import diff_manifests


@st.composite
def two_versions(draw: st.DrawFn) -> tuple[bytes, bytes]:
    format = draw(st.sampled_from(sorted(VERSIONS)))
    return draw(crafted(format)), draw(crafted(format))


@fuzz(ci_examples=100)
@given(crafted("torch-zip") | crafted("safetensors"))
def test_a_smudge_of_a_crafted_manifest_writes_its_bytes_or_fails_by_name(manifest: bytes) -> None:
    written: list[bytes] = []
    try:
        prepare_smudge(manifest, STORE, PATH).write(lambda chunk: written.append(bytes(chunk)))
    except ThetaError:
        return
    assert hashlib.sha256(b"".join(written)).hexdigest() == Manifest.parse(manifest).sha256


@fuzz(ci_examples=100)
@given(two_versions())
def test_a_diff_of_crafted_versions_has_its_numbers_or_fails_by_name(
    versions: tuple[bytes, bytes],
) -> None:
    old, new = (Manifest.parse(version) for version in versions)
    try:
        diff_manifests(old, new, Statistician(STORE, StatsCache(None)), path=PATH)
    except ThetaError:
        pass
