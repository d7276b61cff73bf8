"""The manifest: the small text file that Git stores in place of a model file.

The format is specified in ``docs/manifest.md``; this module is its only
reader and writer. Parsing is strict: a manifest is the security boundary for
history written by other people, so every field is checked before anything is
allocated or any file is opened.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from .dtypes import DTYPES, dtype_by_name
from .errors import ThetaError
from .store.object_format import is_valid_oid

__all__ = [
    "MAGIC",
    "VERSION",
    "MAX_MANIFEST_BYTES",
    "MAX_SIZE",
    "MAX_DIMS",
    "WORK_RATIO",
    "WORK_FLOOR",
    "FORMATS",
    "ManifestError",
    "TensorEntry",
    "Splice",
    "Manifest",
    "looks_like_manifest",
    "encode_name",
    "decode_name",
    "format_metric",
]

MAGIC = b"git-theta-manifest "
VERSION = 1
MAX_MANIFEST_BYTES = 32 << 20
FORMATS = ("torch-zip", "safetensors", "opaque")
# Sizes and counts above this cannot describe a real file; refusing them early
# keeps arithmetic on hostile input far from overflow.
MAX_SIZE = 1 << 60
MAX_DIMS = 64
# What a manifest may make a reader do is bounded by the bytes its objects hold
# (docs/manifest.md, "Work"): the file it rebuilds, and the tensor bytes that
# statistics, merges and loads read, are each at most this many times those
# bytes, plus a floor for small files.
WORK_RATIO = 64
WORK_FLOOR = 256 << 20

_INT_RE = re.compile(r"(0|[1-9][0-9]{0,18})\Z")
# The lines of thousands of tensors, each matched whole: the fields as the checks field
# by field accept them (a name that needs no unescaping, no view); any other line is
# checked field by field, which also names what is wrong.
_INT = r"(?:0|[1-9][0-9]{0,18})"
_OID = r"([0-9a-f]{64})"
_PLAIN_SPLICE = re.compile(rf"({_INT}) ({_INT}) {_OID}\Z")
_PLAIN_TENSOR = re.compile(rf"([^ %]+) ([^ ]+) \[((?:{_INT}(?:,{_INT})*)?)\] {_OID}\Z")


class ManifestError(ThetaError):
    """A manifest that does not follow docs/manifest.md."""

    def __init__(self, message: str, *, line_number: int | None = None) -> None:
        where = f"line {line_number}: " if line_number is not None else ""
        super().__init__(f"invalid manifest: {where}{message}")
        self.line_number = line_number


def looks_like_manifest(data: bytes | bytearray) -> bool:
    """Whether ``data`` starts like a manifest (the full check is :meth:`Manifest.parse`)."""
    return data.startswith(MAGIC)


# Names are written verbatim except for the bytes that would break the line
# grammar, which are percent-encoded from their UTF-8 form. Lone surrogates
# (pickle keeps them in dict keys) have no UTF-8 form and are escaped too.
def _needs_escape(char: str) -> bool:
    return char in "% " or ord(char) < 0x21 or ord(char) == 0x7F or 0xD800 <= ord(char) <= 0xDFFF


# The same set as _needs_escape, for a one-pass check of a whole name.
_ANY_ESCAPE = re.compile("[%\x00-\x20\x7f\ud800-\udfff]")


def encode_name(name: str) -> str:
    if not name:
        raise ManifestError("empty name")
    if not _ANY_ESCAPE.search(name):
        # Nearly every name: parsing checks canonical form by re-rendering, so
        # this runs for every tensor line of every manifest read.
        return name
    return "".join(
        "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")) if _needs_escape(c) else c
        for c in name
    )


def decode_name(text: str) -> str:
    if not text or "%" not in text:
        return text
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "%":
            pair = text[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in "0123456789ABCDEF" for c in pair):
                raise ManifestError(f"bad escape in name {text!r}")
            raw.append(int(pair, 16))
            i += 3
        else:
            raw += text[i].encode("utf-8")
            i += 1
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise ManifestError(f"escapes in name {text!r} are not UTF-8") from None


def _format_ints(values: Iterable[int]) -> str:
    return "[" + ",".join(map(str, values)) + "]"


def _parse_int(text: str, what: str, line_number: int) -> int:
    if not _INT_RE.match(text):
        raise ManifestError(f"bad {what} {text!r}", line_number=line_number)
    value = int(text)
    if value > MAX_SIZE:
        raise ManifestError(f"{what} {value} is too large", line_number=line_number)
    return value


def _parse_ints(text: str, what: str, line_number: int) -> tuple[int, ...]:
    if not (text.startswith("[") and text.endswith("]")):
        raise ManifestError(f"bad {what} {text!r}", line_number=line_number)
    body = text[1:-1]
    values = tuple(_parse_int(v, what, line_number) for v in body.split(",")) if body else ()
    if len(values) > MAX_DIMS:
        raise ManifestError(f"{what} has more than {MAX_DIMS} dimensions", line_number=line_number)
    return values


def _parse_oid(text: str, line_number: int) -> str:
    if not is_valid_oid(text):
        raise ManifestError(f"bad object id {text!r}", line_number=line_number)
    return text


def format_metric(value: int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    # repr() of a double is the shortest string that reads back to the same
    # bits, on every platform, so the manifest stays a pure function of the file.
    return repr(float(value))


def parse_metric(text: str, line_number: int) -> int | float | bool:
    if text in ("true", "false"):
        return text == "true"
    # Clean records integers up to 2**63 (19 digits); longer ones are refused
    # here rather than by int(), whose digit limit raises a plain ValueError.
    if re.fullmatch(r"-?(0|[1-9][0-9]{0,18})", text):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        raise ManifestError(f"bad metric value {text!r}", line_number=line_number) from None
    if format_metric(value) != text:
        raise ManifestError(
            f"metric value {text!r} is not in canonical form", line_number=line_number
        )
    return value


# TensorEntry and Splice are NamedTuples, not frozen dataclasses: as immutable, and made
# in a fifth of the time. A manifest of 6,000 tensors has 12,000 of them, made once when
# clean builds it and again each time it is parsed (a clean's check, a checkout); as
# frozen dataclasses they were a quarter of the parse.
class TensorEntry(NamedTuple):
    """One named tensor. ``oid`` is the object holding its storage.

    ``offset``/``stride`` (in elements) are set only when the tensor is a view
    that is not simply the whole object, e.g. a slice of a shared storage.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    oid: str
    offset: int | None = None
    stride: tuple[int, ...] | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_by_name(self.dtype).itemsize

    def extent_bytes(self) -> int:
        """Bytes of the storage that this tensor reaches, from the storage's start."""
        if self.stride is None:
            return self.nbytes
        if self.numel == 0:
            return 0
        last = (self.offset or 0) + sum(
            (d - 1) * s for d, s in zip(self.shape, self.stride, strict=False)
        )
        return (last + 1) * dtype_by_name(self.dtype).itemsize

    def render(self) -> str:
        fields = ["tensor", encode_name(self.name), self.dtype, _format_ints(self.shape), self.oid]
        if self.stride is not None:
            fields += [f"offset={self.offset}", f"stride={_format_ints(self.stride)}"]
        return " ".join(fields)


class Splice(NamedTuple):
    """Bytes ``[offset, offset+length)`` of the file are the payload of object ``oid``."""

    offset: int
    length: int
    oid: str

    @property
    def end(self) -> int:
        return self.offset + self.length

    def render(self) -> str:
        return f"splice {self.offset} {self.length} {self.oid}"


# The kinds of line after the head, in the order they come.
_METRIC, _TENSOR, _SPLICE = range(3)
_SECTIONS = {"metric": _METRIC, "tensor": _TENSOR, "splice": _SPLICE}
_BY_NAME = operator.attrgetter("name")
_BY_POSITION = operator.attrgetter("offset", "length", "oid")


@dataclass
class Manifest:
    format: str
    size: int
    sha256: str
    skeleton: str
    metrics: dict[str, int | float | bool] = field(default_factory=dict)
    tensors: list[TensorEntry] = field(default_factory=list)
    splices: list[Splice] = field(default_factory=list)

    @property
    def skeleton_length(self) -> int:
        return self.size - sum(s.length for s in self.splices)

    def object_ids(self) -> set[str]:
        """Every object this manifest needs: the skeleton and all spliced payloads."""
        return {self.skeleton} | {s.oid for s in self.splices}

    def stored_bytes(self) -> int:
        """The bytes the manifest's objects hold: the skeleton's, and each spliced object's once."""
        distinct = {splice.oid: splice.length for splice in self.splices}
        return self.skeleton_length + sum(distinct.values())

    def work_limit(self) -> int:
        """The most bytes this manifest may make a reader produce or read (docs/manifest.md)."""
        return WORK_RATIO * self.stored_bytes() + WORK_FLOOR

    def payload_lengths(self) -> dict[str, int]:
        """The payload length of each object, as the manifest implies it."""
        lengths = {s.oid: s.length for s in self.splices}
        lengths.setdefault(self.skeleton, self.skeleton_length)
        return lengths

    def render(self) -> bytes:
        """The canonical text: the one encoding that :meth:`parse` accepts."""
        return self.render_head() + self.render_body()

    def render_head(self) -> bytes:
        """The first five lines of :meth:`render`: version, format, size, sha256, skeleton."""
        lines = [
            f"{MAGIC.decode()}{VERSION}",
            f"format {self.format}",
            f"size {self.size}",
            f"sha256 {self.sha256}",
            f"skeleton {self.skeleton}",
        ]
        return ("\n".join(lines) + "\n").encode("utf-8")

    def render_body(self) -> bytes:
        """The rest of :meth:`render`: the metric, tensor and splice lines."""
        lines = [
            f"metric {encode_name(k)} {format_metric(self.metrics[k])}"
            for k in sorted(self.metrics)
        ]
        lines += [t.render() for t in sorted(self.tensors, key=_BY_NAME)]
        # By length too: an empty splice (a zero-size tensor) may share its offset with the
        # next one, and only the empty-first order parses; the oid settles two empty ones.
        lines += [s.render() for s in sorted(self.splices, key=_BY_POSITION)]
        return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""

    @classmethod
    def parse_head(cls, data: bytes) -> Manifest:
        """The manifest's first five lines alone (version, format, size, sha256,
        skeleton), checked as :meth:`parse` checks them, with no tensors, splices or
        metrics: for a manifest this package rendered, whose body need not be read
        again (6,000 tensors took 40 ms to parse)."""
        try:
            lines = [line.decode("utf-8") for line in data.split(b"\n", 5)[:5]]
        except UnicodeDecodeError as exc:
            raise ManifestError(f"not UTF-8 ({exc.reason})") from None
        return cls._from_head(lines)

    @classmethod
    def _from_head(cls, lines: list[str]) -> Manifest:
        version_line = lines[0]
        if not version_line.startswith(MAGIC.decode()):
            raise ManifestError("missing version line", line_number=1)
        version = version_line[len(MAGIC) :]
        if version != str(VERSION):
            raise ManifestError(
                f"unsupported manifest version {version!r}; "
                f"this git-theta-filter reads version {VERSION}",
                line_number=1,
            )
        if len(lines) < 5:
            raise ManifestError("truncated header")
        header = {}
        for number, key in enumerate(("format", "size", "sha256", "skeleton"), start=2):
            word, _, value = lines[number - 1].partition(" ")
            if word != key:
                raise ManifestError(f"expected {key!r}", line_number=number)
            header[key] = value
        if header["format"] not in FORMATS:
            raise ManifestError(f"unknown format {header['format']!r}", line_number=2)
        if not is_valid_oid(header["sha256"]):  # a sha256, written as an object id is
            raise ManifestError("bad sha256", line_number=4)
        return cls(
            format=header["format"],
            size=_parse_int(header["size"], "size", 3),
            sha256=header["sha256"],
            skeleton=_parse_oid(header["skeleton"], 5),
        )

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{len(data)} bytes is over the {MAX_MANIFEST_BYTES}-byte limit")
        if not data.endswith(b"\n"):
            raise ManifestError("does not end in a newline")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(f"not UTF-8 ({exc.reason})") from None
        lines = text[:-1].split("\n")
        manifest = cls._from_head(lines)
        section = _METRIC
        for number, line in enumerate(lines[5:], start=6):
            kind, _, rest = line.partition(" ")
            order = _SECTIONS.get(kind)
            if order is None:
                raise ManifestError(f"unknown line kind {kind!r}", line_number=number)
            if order < section:
                raise ManifestError(f"{kind!r} line out of order", line_number=number)
            section = order
            if order == _TENSOR:
                manifest._add_tensor_line(rest, number)
            elif order == _SPLICE:
                manifest._add_splice(rest, number)
            else:
                manifest._add_metric(rest.split(" "), number)
        manifest._check_layout()
        if manifest.render() != data:
            raise ManifestError("not in canonical form (sorting, spacing or escapes)")
        return manifest

    def _add_metric(self, fields: list[str], number: int) -> None:
        if len(fields) != 2:
            raise ManifestError("metric needs a name and a value", line_number=number)
        name = decode_name(fields[0])
        if self.metrics and name <= next(reversed(self.metrics)):
            raise ManifestError(f"metric {name!r} is not in sorted order", line_number=number)
        self.metrics[name] = parse_metric(fields[1], number)

    def _add_tensor_line(self, rest: str, number: int) -> None:
        """A tensor line after its first word: the usual one (a name without escapes, a
        whole storage) in one match, anything else field by field."""
        match = _PLAIN_TENSOR.match(rest)
        if match is None:
            self._add_tensor(rest.split(" "), number)
            return
        name, dtype, dims, oid = match.groups()
        if self.tensors and name <= self.tensors[-1].name:
            raise ManifestError(f"tensor {name!r} is not in sorted order", line_number=number)
        if dtype not in DTYPES:
            raise ManifestError(f"tensor {name!r}: unknown dtype {dtype!r}", line_number=number)
        shape = tuple(map(int, dims.split(","))) if dims else ()
        if len(shape) > MAX_DIMS or (shape and max(shape) > MAX_SIZE):
            self._add_tensor(rest.split(" "), number)  # for its error
            return
        self.tensors.append(TensorEntry(name, dtype, shape, oid))

    def _add_tensor(self, fields: list[str], number: int) -> None:
        if len(fields) not in (4, 6):
            raise ManifestError("tensor needs name, dtype, shape, oid", line_number=number)
        name = decode_name(fields[0])
        if self.tensors and name <= self.tensors[-1].name:
            raise ManifestError(f"tensor {name!r} is not in sorted order", line_number=number)
        if fields[1] not in DTYPES:
            raise ManifestError(f"tensor {name!r}: unknown dtype {fields[1]!r}", line_number=number)
        offset = stride = None
        if len(fields) == 6:
            if not (fields[4].startswith("offset=") and fields[5].startswith("stride=")):
                raise ManifestError(
                    f"tensor {name!r}: expected offset= and stride=", line_number=number
                )
            offset = _parse_int(fields[4][len("offset=") :], "offset", number)
            stride = _parse_ints(fields[5][len("stride=") :], "stride", number)
        shape = _parse_ints(fields[2], "shape", number)
        if stride is not None and len(stride) != len(shape):
            raise ManifestError(
                f"tensor {name!r}: stride and shape differ in rank", line_number=number
            )
        self.tensors.append(
            TensorEntry(name, fields[1], shape, _parse_oid(fields[3], number), offset, stride)
        )

    def _add_splice(self, rest: str, number: int) -> None:
        match = _PLAIN_SPLICE.match(rest)
        if match is not None:
            offset, length = int(match[1]), int(match[2])
            if offset > MAX_SIZE or length > MAX_SIZE:
                match = None  # the check field by field names it
        if match is not None:
            splice = Splice(offset, length, match[3])
            end = offset + length
        else:
            fields = rest.split(" ")
            if len(fields) != 3:
                raise ManifestError("splice needs offset, length, oid", line_number=number)
            splice = Splice(
                _parse_int(fields[0], "offset", number),
                _parse_int(fields[1], "length", number),
                _parse_oid(fields[2], number),
            )
            end = splice.end
        if self.splices and splice.offset < self.splices[-1].end:
            raise ManifestError("splices overlap or are out of order", line_number=number)
        if end > self.size:
            raise ManifestError(
                f"splice at {splice.offset} runs past the file size {self.size}", line_number=number
            )
        self.splices.append(splice)

    def _check_layout(self) -> None:
        lengths: dict[str, int] = {}
        for splice in self.splices:
            if lengths.setdefault(splice.oid, splice.length) != splice.length:
                raise ManifestError(f"object {splice.oid} is spliced with two different lengths")
        if self.skeleton in lengths and lengths[self.skeleton] != self.skeleton_length:
            raise ManifestError("the skeleton object is also spliced with another length")
        for tensor in self.tensors:
            if tensor.oid not in lengths:
                raise ManifestError(
                    f"tensor {tensor.name!r}: object {tensor.oid} is not spliced into the file"
                )
            # Checked with exact integers, so a 2**62-element shape cannot wrap around.
            if tensor.extent_bytes() > lengths[tensor.oid]:
                raise ManifestError(f"tensor {tensor.name!r} reaches past the end of its object")
        self._check_work()

    def _check_work(self) -> None:
        """Refuse a manifest that makes much work of few stored bytes: a small object
        spliced thousands of times, a stride-0 view of 2**40 elements, thousands of
        tensor lines over one object.
        """
        limit = self.work_limit()
        stored = self.stored_bytes()
        if self.size > limit:
            raise ManifestError(
                f"a file of {self.size} bytes from {stored} stored bytes is over the work "
                f"limit ({WORK_RATIO} times the stored bytes, plus {WORK_FLOOR})"
            )
        read = 0
        for tensor in self.tensors:
            read += tensor.nbytes
            if read > limit:
                raise ManifestError(
                    f"tensors of more than {limit} bytes from {stored} stored bytes are over "
                    f"the work limit ({WORK_RATIO} times the stored bytes, plus {WORK_FLOOR}); "
                    f"the first over it is {tensor.name!r}"
                )
