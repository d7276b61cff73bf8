"""Fuzz the manifest parser with text built from the grammar's own tokens, valid and not.

Every input either raises ManifestError or parses to a manifest that renders
back to the same bytes and whose layout is safe to act on: splices in order,
within the file, and every tensor inside its object.
"""

from __future__ import annotations

from fuzz_settings import fuzz
from hypothesis import given
from hypothesis import strategies as st

from git_theta_filter.manifest import Manifest, ManifestError

OID = st.one_of(
    st.text("0123456789abcdef", min_size=64, max_size=64),
    st.sampled_from(["a" * 64, "b" * 64, "../" + "c" * 61, "A" * 64, "a" * 63, "a" * 65, ""]),
)
NUMBER = st.one_of(
    st.integers(0, 2000).map(str),
    st.sampled_from(
        ["0", "00", "-1", "01", str(2**60), str(2**60 + 1), str(2**62), "9" * 30, "1e3", " 1"]
    ),
)
SHAPE = st.lists(NUMBER, max_size=4).map(lambda dims: "[" + ",".join(dims) + "]") | st.sampled_from(
    ["[]", "[", "(1)", "[1,]"]
)
NAME = st.sampled_from(["w", "b", "model.0.weight", "%20x", "%ZZ", "a%25", "ü", "x y", "", "#2"])
DTYPE = st.sampled_from(["F32", "BF16", "U8", "C128", "I64", "F33", "f32"])
METRIC = st.sampled_from(["1", "-0", "0.5", "1e-05", "nan", "-inf", "true", "True", "1.50", "0.1"])

LINE = st.one_of(
    st.tuples(NAME, METRIC).map(lambda t: f"metric {t[0]} {t[1]}"),
    st.tuples(NAME, DTYPE, SHAPE, OID).map(lambda t: "tensor " + " ".join(t)),
    st.tuples(NAME, DTYPE, SHAPE, OID, NUMBER, SHAPE).map(
        lambda t: f"tensor {t[0]} {t[1]} {t[2]} {t[3]} offset={t[4]} stride={t[5]}"
    ),
    st.tuples(NUMBER, NUMBER, OID).map(lambda t: "splice " + " ".join(t)),
    st.text(max_size=20),
)


@st.composite
def manifest_texts(draw: st.DrawFn) -> bytes:
    version = draw(
        st.sampled_from(
            [
                "git-theta-manifest 1",
                "git-theta-manifest 2",
                "git-theta-manifest 01",
                "git-theta-manifest",
            ]
        )
    )
    header = [
        version,
        f"format {draw(st.sampled_from(['torch-zip', 'safetensors', 'opaque', 'pickle']))}",
        f"size {draw(NUMBER)}",
        f"sha256 {draw(OID)}",
        f"skeleton {draw(OID)}",
    ]
    if draw(st.integers(0, 9)) == 0:
        header = draw(st.permutations(header))
    lines = header + draw(st.lists(LINE, max_size=8))
    text = "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n", "\r\n"]))
    return text.encode("utf-8", "surrogatepass")


def check_layout(manifest: Manifest) -> None:
    cursor = 0
    lengths = {}
    for splice in manifest.splices:
        assert cursor <= splice.offset and splice.end <= manifest.size
        cursor = splice.end
        lengths[splice.oid] = splice.length
    for tensor in manifest.tensors:
        assert tensor.extent_bytes() <= lengths[tensor.oid]


@fuzz(600)
@given(manifest_texts())
def test_grammar_built_text_is_refused_or_canonical_and_safe(text: bytes) -> None:
    try:
        manifest = Manifest.parse(text)
    except ManifestError:
        return
    assert manifest.render() == text
    check_layout(manifest)


@fuzz(300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_or_canonical(data: bytes) -> None:
    try:
        manifest = Manifest.parse(b"git-theta-manifest 1\n" + data)
    except ManifestError:
        return
    assert manifest.render() == b"git-theta-manifest 1\n" + data
