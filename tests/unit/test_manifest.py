"""The manifest (docs/manifest.md): canonical rendering, strict parsing, named errors."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from git_theta_filter.dtypes import DTYPES
from git_theta_filter.manifest import (
    Manifest,
    ManifestError,
    Splice,
    TensorEntry,
    decode_name,
    encode_name,
    format_metric,
)

OID_A = "a" * 64
OID_B = "b" * 64
OID_C = "c" * 64
SKEL = "5" * 64
SHA = "0123456789abcdef" * 4

EXAMPLE = f"""\
git-theta-manifest 1
format torch-zip
size 1000
sha256 {SHA}
skeleton {SKEL}
metric epoch 3
metric loss 0.25
tensor model.0.weight F32 [4,8] {OID_A}
tensor tied F32 [4,8] {OID_A}
tensor view F32 [2,8] {OID_A} offset=16 stride=[8,1]
splice 64 128 {OID_A}
splice 256 16 {OID_B}
""".encode()


def test_example_parses_to_its_fields() -> None:
    m = Manifest.parse(EXAMPLE)
    assert (m.format, m.size, m.sha256, m.skeleton) == ("torch-zip", 1000, SHA, SKEL)
    assert m.metrics == {"epoch": 3, "loss": 0.25}
    assert type(m.metrics["epoch"]) is int
    assert m.tensors == [
        TensorEntry("model.0.weight", "F32", (4, 8), OID_A),
        TensorEntry("tied", "F32", (4, 8), OID_A),
        TensorEntry("view", "F32", (2, 8), OID_A, 16, (8, 1)),
    ]
    assert m.splices == [Splice(64, 128, OID_A), Splice(256, 16, OID_B)]
    assert m.skeleton_length == 1000 - 144
    assert m.object_ids() == {SKEL, OID_A, OID_B}
    assert m.payload_lengths() == {OID_A: 128, OID_B: 16, SKEL: 856}
    assert m.render() == EXAMPLE


def test_parse_head_reads_the_first_five_lines_alone_and_checks_them_as_parse_does() -> None:
    head = Manifest.parse_head(EXAMPLE)
    assert (head.format, head.size, head.sha256, head.skeleton) == ("torch-zip", 1000, SHA, SKEL)
    assert head.tensors == [] and head.splices == [] and head.metrics == {}
    for bad in (
        EXAMPLE.replace(b"size 1000", b"size -1"),
        EXAMPLE.replace(f"sha256 {SHA}".encode(), b"sha256 xyz"),
        EXAMPLE.split(b"\nskeleton")[0] + b"\n",  # truncated
    ):
        with pytest.raises(ManifestError):
            Manifest.parse_head(bad)


def test_render_sorts_every_section() -> None:
    m = Manifest(
        format="safetensors",
        size=20,
        sha256=SHA,
        skeleton=SKEL,
        metrics={"b": 1, "a": 2.5},
        tensors=[TensorEntry("z", "U8", (4,), OID_B), TensorEntry("y", "U8", (4,), OID_A)],
        splices=[Splice(10, 4, OID_B), Splice(0, 4, OID_A)],
    )
    lines = m.render().decode().splitlines()
    assert lines[5:] == [
        "metric a 2.5",
        "metric b 1",
        f"tensor y U8 [4] {OID_A}",
        f"tensor z U8 [4] {OID_B}",
        f"splice 0 4 {OID_A}",
        f"splice 10 4 {OID_B}",
    ]


def test_an_empty_splice_sharing_an_offset_renders_first_and_parses() -> None:
    """A zero-size tensor's splice may sit at the offset of the next one
    (safetensors [8,8] then [8,16]).
    """
    empty, full, other_empty = Splice(8, 0, OID_A), Splice(8, 8, OID_B), Splice(8, 0, OID_C)
    m = Manifest(
        format="safetensors",
        size=16,
        sha256=SHA,
        skeleton=SKEL,
        tensors=[TensorEntry("e", "F32", (0,), OID_A), TensorEntry("f", "F32", (2,), OID_B)],
        splices=[full, other_empty, empty],
    )
    text = m.render()
    assert text.decode().splitlines()[-3:] == [
        f"splice 8 0 {OID_A}",
        f"splice 8 0 {OID_C}",
        f"splice 8 8 {OID_B}",
    ]
    assert Manifest.parse(text).splices == [empty, other_empty, full]
    # The other order of the two empty splices is a second encoding of the same manifest: refused.
    swapped = text.replace(
        f"splice 8 0 {OID_A}\nsplice 8 0 {OID_C}".encode(),
        f"splice 8 0 {OID_C}\nsplice 8 0 {OID_A}".encode(),
    )
    with pytest.raises(ManifestError, match="not in canonical form"):
        Manifest.parse(swapped)


@pytest.mark.parametrize(
    "name, encoded",
    [
        ("model.fc1.weight", "model.fc1.weight"),
        ("a b", "a%20b"),
        ("100%", "100%25"),
        ("tab\there", "tab%09here"),
        ("line\nbreak", "line%0Abreak"),
        ("del\x7f", "del%7F"),
        ("héllo→世界", "héllo→世界"),
        ("\ud800lone", "%ED%A0%80lone"),  # a lone surrogate, as pickle allows in keys
    ],
)
def test_name_escaping(name: str, encoded: str) -> None:
    assert encode_name(name) == encoded
    assert decode_name(encoded) == name


@pytest.mark.parametrize(
    "value, text",
    [
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (-7, "-7"),
        (2**63, "9223372036854775808"),
        (0.25, "0.25"),
        (1e-05, "1e-05"),
        (1e16, "1e+16"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (float("-inf"), "-inf"),
        (-0.0, "-0.0"),
        (3.0, "3.0"),
    ],
)
def test_metric_values_are_canonical(value: float, text: str) -> None:
    assert format_metric(value) == text
    m = Manifest("opaque", 0, SHA, SKEL, metrics={"m": value})
    parsed = Manifest.parse(m.render()).metrics["m"]
    assert type(parsed) is type(value)
    assert format_metric(parsed) == text
    if isinstance(value, float):
        assert math.copysign(1.0, parsed) == math.copysign(1.0, value) or math.isnan(value)


# -- hypothesis: render/parse round trip -----------------------------------------------

names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12
) | st.sampled_from(
    ["a b", "%", "%25", "model.0.weight", "ü ñ", "x\ny", "#2", "[1]", "tensor", "\x00"]
)
oids = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
metric_values = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), -0.0, 0.0, float("inf"), float("-inf")]),
)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    tensor_names = draw(st.lists(names, max_size=6, unique=True))
    used_oids = {SKEL}
    splices: list[Splice] = []
    tensors: list[TensorEntry] = []
    cursor = draw(st.integers(0, 64))
    for name in tensor_names:
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        itemsize = DTYPES[dtype].itemsize
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        offset = stride = None
        if draw(st.booleans()):
            offset = draw(st.integers(0, 4))
            stride = tuple(
                draw(st.lists(st.integers(0, 6), min_size=len(shape), max_size=len(shape)))
            )
        entry = TensorEntry(name, dtype, shape, "", offset, stride)
        extent = entry.extent_bytes()
        # Tied: reuse an earlier splice's object when this tensor fits in it.
        reusable = [s for s in splices if s.length >= extent]
        if reusable and draw(st.booleans()):
            oid = draw(st.sampled_from(reusable)).oid
        else:
            oid = draw(oids.filter(lambda o: o not in used_oids))
            used_oids.add(oid)
            length = extent + draw(st.integers(0, 3)) * itemsize
            splices.append(Splice(cursor, length, oid))
            cursor += length + draw(st.integers(0, 100))
        tensors.append(TensorEntry(name, dtype, shape, oid, offset, stride))
    return Manifest(
        format=draw(st.sampled_from(["torch-zip", "safetensors", "opaque"])),
        size=cursor + draw(st.integers(0, 1000)),
        sha256=draw(oids),
        skeleton=SKEL,
        metrics=draw(st.dictionaries(names, metric_values, max_size=6)),
        tensors=draw(st.permutations(tensors)),
        splices=draw(st.permutations(splices)),
    )


def same_metric(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return (
        type(a) is type(b)
        and a == b
        and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b))
    )


@settings(max_examples=100, deadline=None)
@given(manifests())
def test_render_parse_round_trip(m: Manifest) -> None:
    text = m.render()
    parsed = Manifest.parse(text)
    assert parsed.render() == text
    assert (parsed.format, parsed.size, parsed.sha256, parsed.skeleton) == (
        m.format,
        m.size,
        m.sha256,
        m.skeleton,
    )
    assert parsed.tensors == sorted(m.tensors, key=lambda t: t.name)
    assert parsed.splices == sorted(m.splices, key=lambda s: (s.offset, s.length, s.oid))
    assert parsed.metrics.keys() == m.metrics.keys()
    assert all(same_metric(m.metrics[k], parsed.metrics[k]) for k in m.metrics)
    # Names never break the line grammar: one line per entry, fields split by one space.
    lines = text.decode().split("\n")[:-1]
    assert len(lines) == 5 + len(m.metrics) + len(m.tensors) + len(m.splices)
    assert all("  " not in line and not line.endswith(" ") for line in lines)


@settings(max_examples=200, deadline=None)
@given(manifests(), st.data())
def test_any_corruption_is_refused_or_canonical(m: Manifest, data: st.DataObject) -> None:
    """Parsing hostile text raises ManifestError and nothing else; what parses is canonical."""
    text = bytearray(m.render())
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(text) - 1))
        action = data.draw(st.sampled_from(["replace", "delete", "insert"]))
        byte = data.draw(st.sampled_from(list(b" \n%09azAZ[],=-.+\x00\xff\xc3") + [0xED]))
        if action == "replace":
            text[position] = byte
        elif action == "delete":
            del text[position]
        else:
            text.insert(position, byte)
    try:
        parsed = Manifest.parse(bytes(text))
    except ManifestError:
        return
    assert parsed.render() == bytes(text)


# -- rejections, with the messages pinned --------------------------------------------------


def replace(old: str, new: str) -> bytes:
    text = EXAMPLE.decode()
    assert old in text, old
    return text.replace(old, new, 1).encode()


REJECTIONS = [
    # version line
    (
        replace("git-theta-manifest 1", "git-theta-manifest 2"),
        "line 1: unsupported manifest version '2'; this git-theta-filter reads version 1",
    ),
    (
        replace("git-theta-manifest 1", "git-theta-manifest 01"),
        "line 1: unsupported manifest version '01'",
    ),
    # A later version may change everything after its first line: the version alone decides.
    (
        b"git-theta-manifest 2\nchunks zstd\nobject 1 2\n",
        "line 1: unsupported manifest version '2'; this git-theta-filter reads version 1",
    ),
    (b"git-theta-manifest 10\n", "line 1: unsupported manifest version '10'"),
    (replace("git-theta-manifest 1", "git-lfs-manifest 1"), "line 1: missing version line"),
    (b"version https://git-lfs.github.com/spec/v1\n", "line 1: missing version line"),
    # header
    (replace("format torch-zip", "format pickle"), "line 2: unknown format 'pickle'"),
    (replace("size 1000", "size 01000"), "line 3: bad size '01000'"),
    (replace("size 1000", "size -1"), "line 3: bad size '-1'"),
    (
        replace("size 1000", "size 9999999999999999999"),
        "line 3: size 9999999999999999999 is too large",
    ),
    (replace(f"sha256 {SHA}", f"sha256 {SHA.upper()}"), "line 4: bad sha256"),
    (
        replace(f"skeleton {SKEL}", "skeleton ../../../../etc/passwd"),
        "line 5: bad object id '../../../../etc/passwd'",
    ),
    (replace(f"sha256 {SHA}\n", ""), "line 4: expected 'sha256'"),
    (
        EXAMPLE.splitlines(keepends=True)[0] + EXAMPLE.splitlines(keepends=True)[1],
        "truncated header",
    ),
    # object ids
    (
        replace(f"[4,8] {OID_A}\ntensor tied", f"[4,8] {'A' * 64}\ntensor tied"),
        "line 8: bad object id 'AAAA",
    ),
    (
        replace(f"[4,8] {OID_A}\ntensor tied", f"[4,8] {OID_A[:-1]}\ntensor tied"),
        "line 8: bad object id",
    ),
    (
        replace(f"splice 256 16 {OID_B}", f"splice 256 16 ../{OID_B[3:]}"),
        "line 12: bad object id '../bbb",
    ),
    (replace(f"splice 256 16 {OID_B}", f"splice 256 16 {OID_B}/"), "line 12: bad object id"),
    # order and uniqueness
    (
        replace("metric epoch 3\nmetric loss 0.25", "metric loss 0.25\nmetric epoch 3"),
        "line 7: metric 'epoch' is not in sorted order",
    ),
    (
        replace("metric loss 0.25", "metric epoch 0.25"),
        "line 7: metric 'epoch' is not in sorted order",
    ),
    (
        replace(f"tensor tied F32 [4,8] {OID_A}\n", "").replace(
            b"tensor model.0.weight",
            f"tensor tied F32 [4,8] {OID_A}\ntensor model.0.weight".encode(),
        ),
        "line 9: tensor 'model.0.weight' is not in sorted order",
    ),
    # A view's line is read field by field, and checked for order there too.
    (replace("tensor view", "tensor tie"), "line 10: tensor 'tie' is not in sorted order"),
    (
        replace("metric epoch 3\n", "").replace(b"tensor view", b"metric epoch 3\ntensor view"),
        "line 9: 'metric' line out of order",
    ),
    (
        replace(f"splice 64 128 {OID_A}\n", "") + f"splice 64 128 {OID_A}\n".encode(),
        "line 12: splices overlap or are out of order",
    ),
    (replace("tensor view", "weight view"), "line 10: unknown line kind 'weight'"),
    # layout
    (replace("splice 256 16", "splice 100 16"), "line 12: splices overlap or are out of order"),
    (replace("splice 256 16", "splice 191 16"), "line 12: splices overlap or are out of order"),
    (
        replace("splice 256 16", "splice 990 16"),
        "line 12: splice at 990 runs past the file size 1000",
    ),
    (replace("size 1000", "size 271"), "line 12: splice at 256 runs past the file size 271"),
    (
        replace("tensor tied F32 [4,8]", "tensor tied F32 [4,9]"),
        "tensor 'tied' reaches past the end of its object",
    ),
    (
        replace("offset=16 stride=[8,1]", "offset=113 stride=[8,1]"),
        "tensor 'view' reaches past the end of its object",
    ),
    (
        replace("[2,8] " + OID_A, "[2,8] " + OID_C),
        f"tensor 'view': object {OID_C} is not spliced into the file",
    ),
    (
        replace(f"splice 256 16 {OID_B}", f"splice 256 16 {OID_A}"),
        f"object {OID_A} is spliced with two different lengths",
    ),
    (
        replace(f"splice 256 16 {OID_B}", f"splice 256 16 {SKEL}"),
        "the skeleton object is also spliced with another length",
    ),
    # fields
    (replace("F32 [2,8]", "F33 [2,8]"), "line 10: tensor 'view': unknown dtype 'F33'"),
    (replace("tied F32", "tied F33"), "line 9: tensor 'tied': unknown dtype 'F33'"),
    (replace("tied F32 [4,8]", f"tied F32 [4,{2**61}]"), f"line 9: shape {2**61} is too large"),
    (
        replace("tied F32 [4,8]", "tied F32 [" + ",".join(["1"] * 65) + "]"),
        "line 9: shape has more than 64 dimensions",
    ),
    (replace("tied F32 [4,8]", "tied F32 [4,8,]"), "line 9: bad shape ''"),
    (replace("tied F32 [4,8]", "tied  F32 [4,8]"), "line 9: tensor needs name, dtype, shape, oid"),
    (replace("splice 256 16", f"splice {2**61} 16"), f"line 12: offset {2**61} is too large"),
    (replace("splice 256 16", f"splice 256 {2**61}"), f"line 12: length {2**61} is too large"),
    (replace("splice 256 16", "splice 256  16"), "line 12: splice needs offset, length, oid"),
    (replace("splice 256 16", "splice 256 016"), "line 12: bad length '016'"),
    (replace("[2,8]", "[2,08]"), "line 10: bad shape '08'"),
    (replace("[2,8]", "(2,8)"), "line 10: bad shape '(2,8)'"),
    (
        replace("stride=[8,1]", "stride=[8]"),
        "line 10: tensor 'view': stride and shape differ in rank",
    ),
    (
        replace("offset=16 stride=[8,1]", "stride=[8,1] offset=16"),
        "line 10: tensor 'view': expected offset= and stride=",
    ),
    (replace("tensor tied F32", "tensor tied%ZZ F32"), "bad escape in name 'tied%ZZ'"),
    (replace("tensor tied F32", "tensor tied%FF F32"), "escapes in name 'tied%FF' are not UTF-8"),
    (replace("metric epoch 3", "metric epoch 3 4"), "line 6: metric needs a name and a value"),
    (
        replace("metric epoch 3", "metric epoch 1.50"),
        "line 6: metric value '1.50' is not in canonical form",
    ),
    (replace("metric epoch 3", "metric epoch True"), "line 6: bad metric value 'True'"),
    (replace("metric epoch 3", "metric epoch " + "9" * 5000), "line 6: metric value '99999"),
    # canonical form
    (replace("size 1000", "size  1000"), "line 3: bad size ' 1000'"),
    (
        replace("tensor tied F32", "tensor  tied F32"),
        "line 9: tensor needs name, dtype, shape, oid",
    ),
    (
        replace("metric loss 0.25", "metric loss 0.250"),
        "line 7: metric value '0.250' is not in canonical form",
    ),
    (
        replace("metric epoch 3", "metric epoch -0"),
        "not in canonical form (sorting, spacing or escapes)",
    ),
    (
        replace("metric epoch 3", "metric e%70och 3"),
        "not in canonical form (sorting, spacing or escapes)",
    ),
    (
        replace(f"splice 256 16 {OID_B}", f"splice 256 16 {OID_B} "),
        "line 12: splice needs offset, length, oid",
    ),
    (EXAMPLE.replace(b"\n", b"\r\n"), "line 1: unsupported manifest version '1\\r'"),
    (EXAMPLE[:-1], "does not end in a newline"),
    (EXAMPLE + b"\n", "line 13: unknown line kind ''"),
    (EXAMPLE.replace(b"tied", b"ti\xffd"), "not UTF-8 (invalid start byte)"),
]


@pytest.mark.parametrize("text, message", REJECTIONS, ids=[m for _, m in REJECTIONS])
def test_rejections(text: bytes, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        Manifest.parse(text)
    assert str(info.value).startswith("invalid manifest: ")
    assert message in str(info.value)


def test_oversized_manifest_is_refused_before_parsing() -> None:
    with pytest.raises(ManifestError, match="bytes is over the 33554432-byte limit"):
        Manifest.parse(b"git-theta-manifest 1\n" + b"x" * (32 << 20))


def test_line_number_is_kept_on_the_error() -> None:
    with pytest.raises(ManifestError) as info:
        Manifest.parse(replace("size 1000", "size x"))
    assert info.value.line_number == 3


def test_huge_shape_is_checked_with_exact_integers() -> None:
    """A 2**62-element tensor must not wrap around and pass the extent check."""
    with pytest.raises(ManifestError, match="reaches past the end of its object"):
        Manifest.parse(replace("tensor tied F32 [4,8]", f"tensor tied F32 [{2**31},{2**31}]"))


def test_extent_of_views() -> None:
    assert TensorEntry("t", "F32", (2, 8), OID_A, 16, (8, 1)).extent_bytes() == (16 + 15 + 1) * 4
    assert TensorEntry("t", "F32", (3, 0), OID_A, 5, (1, 1)).extent_bytes() == 0
    assert TensorEntry("t", "F32", (), OID_A).extent_bytes() == 4
    # A transposed view reaches as far as its largest index.
    assert TensorEntry("t", "BF16", (8, 4), OID_A, 0, (1, 8)).extent_bytes() == 32 * 2


def test_manifest_is_pure_function_of_values() -> None:
    """Equal manifests built in any order render to identical bytes."""
    a = Manifest.parse(EXAMPLE)
    b = Manifest(
        a.format,
        a.size,
        a.sha256,
        a.skeleton,
        dict(reversed(list(a.metrics.items()))),
        list(reversed(a.tensors)),
        list(reversed(a.splices)),
    )
    assert a.render() == b.render() == EXAMPLE
    # Floats are written with repr(): bit-exact, never rounded for display.
    value = struct.unpack("<d", struct.pack("<Q", 0x3FB999999999999A))[0]
    assert format_metric(value) == "0.1"
    assert format_metric(math.nextafter(0.1, 1)) == "0.10000000000000002"


def test_empty_name_cannot_be_written() -> None:
    with pytest.raises(ManifestError, match="empty name"):
        encode_name("")


def test_render_is_its_head_and_body_and_a_manifest_of_no_lines_has_an_empty_body() -> None:
    manifest = Manifest.parse(EXAMPLE)
    assert manifest.render_head() == b"".join(EXAMPLE.splitlines(keepends=True)[:5])
    assert manifest.render_head() + manifest.render_body() == manifest.render() == EXAMPLE
    empty = Manifest(format="opaque", size=0, sha256=SHA, skeleton=SKEL)
    assert empty.render_body() == b""
    assert empty.render() == empty.render_head()
    assert Manifest.parse(empty.render()) == empty
