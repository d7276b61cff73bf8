"""Parsing a metrics file (JSON, TOML, YAML) within a budget.

Metrics files are committed by whoever made the commit (docs/security.md,
classes 3 and 4), so parsing one must cost time and memory in proportion to
its size, whatever it holds. The budget, for every format:

* at most :data:`MAX_METRICS_FILE` bytes (1 MiB), refused before parsing;
* integers of at most :data:`MAX_INTEGER_DIGITS` decimal digits (Python's
  own default limit, applied here even when the interpreter's is raised or
  off): longer ones would cost quadratic time to convert;
* containers nested at most :data:`MAX_NESTING` deep;
* at most :data:`MAX_METRICS` metrics per file, each name at most
  :data:`MAX_NAME` characters: without these, a long key over many leaves
  would multiply the file's size in the names built from it;
* TOML: a dotted key (``a.b.c = 1``, ``[a.b.c]``) has at most
  :data:`MAX_NESTING` parts, checked by a linear scan before ``tomllib``
  runs, whose time grows with the square of a key's parts (16,000 parts: 20 s);
* YAML: aliases are refused (``*a`` repeated over nested anchors is the
  "billion laughs"), at most :data:`MAX_YAML_SCALARS` scalars, and a scalar
  read as a number has at most :data:`MAX_YAML_NUMBER` characters (YAML 1.1
  base-60 numbers such as ``1:2:3:...`` cost quadratic time in PyYAML). These
  are checked on the parser's events (libyaml's when PyYAML has it) before a
  single node is built: building costs about 50 µs per scalar.

A file over its budget raises :class:`MetricsFileError`, which callers show
as a warning and skip. Measured: a 1 MiB file of any format parses in well
under a second; the files in ``tests/hostile/test_metrics_files.py`` that
probe each limit are refused within the same.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from .errors import ThetaError
from .formats.pickle_scan import MAX_METRIC_INTEGER, MAX_METRIC_SEQUENCE
from .units import MAX_INTEGER_DIGITS, bounded_integer_digits

__all__ = [
    "Metric",
    "MetricsFileError",
    "MAX_METRICS_FILE",
    "MAX_INTEGER_DIGITS",
    "MAX_NESTING",
    "MAX_METRICS",
    "MAX_NAME",
    "MAX_YAML_NUMBER",
    "MAX_YAML_SCALARS",
    "flatten",
    "parse_metrics_file",
]

Metric = int | float | bool
MAX_METRICS_FILE = 1 << 20
MAX_NESTING = 32
MAX_METRICS = 10_000
MAX_NAME = 256
MAX_YAML_NUMBER = 100
MAX_YAML_SCALARS = 4 * MAX_METRICS
# TOML tokens for counting a key's parts: strings and comments (whose dots never
# count; an unterminated one runs to the end of its line, so no text is scanned
# twice), the characters that end a key, and runs of anything else.
_TOML_TOKENS = re.compile(
    r'(?P<string>"""[\s\S]*?(?:"""|\Z)'
    r"|'''[\s\S]*?(?:'''|\Z)"
    r'|"(?:[^"\\\n]|\\.)*(?:"|$)'
    r"|'[^'\n]*(?:'|$))"
    r"|(?P<comment>#[^\n]*)|(?P<end>[=\[\]{},\n])"
    r"""|(?P<plain>[^"'#=\[\]{},\n]+)""",
    re.MULTILINE,
)


class MetricsFileError(ThetaError):
    """A metrics file that cannot be read, or that is over its budget."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"metrics file {path}: {reason}")
        self.path = path
        self.reason = reason


class _OverBudget(Exception):
    """Raised inside a parse or flatten; becomes a MetricsFileError naming the file."""


def flatten(data: Any, prefix: str = "") -> dict[str, Metric]:
    """Numeric and boolean leaves of nested dicts and lists, keyed by dotted paths.

    Lists longer than the manifest's limit are ids, not metrics, and are
    skipped. Raises ``ValueError`` past :data:`MAX_NESTING`, :data:`MAX_NAME`
    or :data:`MAX_METRICS`.
    """
    try:
        return _flatten(data, prefix)
    except _OverBudget as exc:
        raise ValueError(str(exc)) from None


def _flatten(data: Any, prefix: str = "") -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    _flatten_into(out, data, prefix, 0)
    return out


def _flatten_into(out: dict[str, Metric], data: Any, prefix: str, depth: int) -> None:
    if len(prefix) > MAX_NAME:
        raise _OverBudget(f"a metric name is longer than {MAX_NAME} characters")
    if isinstance(data, (bool, int, float)):
        # As clean records a checkpoint's scalars: a larger integer is no metric, and a
        # difference of two of 4300 digits could not be printed (Python's digit limit).
        if prefix and not (type(data) is int and abs(data) > MAX_METRIC_INTEGER):
            if len(out) >= MAX_METRICS:
                raise _OverBudget(f"more than {MAX_METRICS} metrics")
            out[prefix] = data
        return
    if isinstance(data, dict):
        items: Any = data.items()
    elif isinstance(data, (list, tuple)) and len(data) <= MAX_METRIC_SEQUENCE:
        items = enumerate(data)
    else:
        return
    if depth >= MAX_NESTING:
        raise _OverBudget(f"nested deeper than {MAX_NESTING} levels")
    for key, value in items:
        # A key over the limit makes a name over it: refused as the call below begins.
        name = str(key)
        _flatten_into(out, value, f"{prefix}.{name}" if prefix else name, depth + 1)


def parse_metrics_file(path: str, data: bytes) -> dict[str, Metric]:
    """The flattened metrics in a file, read by its extension (JSON when unknown)."""
    suffix = Path(path).suffix.lower()
    kind = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}.get(suffix, "JSON")
    if len(data) > MAX_METRICS_FILE:
        raise MetricsFileError(path, f"larger than {MAX_METRICS_FILE} bytes")
    try:
        with bounded_integer_digits():
            if kind == "TOML":
                text = data.decode("utf-8")
                _check_toml_keys(text)
                parsed = tomllib.loads(text)
            elif kind == "YAML":
                parsed = _load_yaml(path, data)
            else:
                parsed = json.loads(data)
        return _flatten(parsed)
    except MetricsFileError:
        raise
    except _OverBudget as exc:
        raise MetricsFileError(path, str(exc)) from None
    except RecursionError:
        raise MetricsFileError(path, f"nested deeper than {MAX_NESTING} levels") from None
    except Exception as exc:  # any syntax error of any of the three parsers
        syntax = suffix.lstrip(".") or "JSON"
        raise MetricsFileError(path, f"not valid {syntax} ({_one_line(exc)})") from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


def _check_toml_keys(text: str) -> None:
    """Refuse a dotted key of more than MAX_NESTING parts, in one pass over the tokens."""
    dots = 0
    for match in _TOML_TOKENS.finditer(text):
        if match.lastgroup == "end":
            dots = 0
        elif match.lastgroup == "plain":
            dots += match.group().count(".")
            if dots >= MAX_NESTING:
                raise _OverBudget(f"a dotted key with more than {MAX_NESTING} parts")


def _load_yaml(path: str, data: bytes) -> Any:
    try:
        import yaml
    except ImportError:
        raise MetricsFileError(path, "reading YAML needs PyYAML (pip install pyyaml)") from None
    loader = _bounded_yaml_loader(yaml)
    _check_yaml_events(yaml, loader, data)
    return yaml.load(data, Loader=loader)  # noqa: S506 (a SafeLoader, bounded)


def _check_yaml_events(yaml: Any, loader: Any, data: bytes) -> None:
    """Refuse aliases, deep nesting and too many scalars before a single node is built."""
    depth = scalars = 0
    for event in yaml.parse(data, Loader=loader):
        if isinstance(event, yaml.ScalarEvent):
            scalars += 1
            if scalars > MAX_YAML_SCALARS:
                raise _OverBudget(f"more than {MAX_YAML_SCALARS} YAML scalars")
        elif isinstance(event, yaml.AliasEvent):
            raise _OverBudget("YAML aliases (*name) are not accepted in metrics files")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_NESTING:
                raise _OverBudget(f"nested deeper than {MAX_NESTING} levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


_loader: Any = None


def _bounded_yaml_loader(yaml: Any) -> Any:
    """PyYAML's safe loader (libyaml's when available) whose numbers have a length limit."""
    global _loader
    if _loader is not None:
        return _loader
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class BoundedSafeLoader(base):  # type: ignore[misc, valid-type]
        pass

    def number(constructor: Any) -> Any:
        def construct(loader: Any, node: Any) -> Any:
            if len(node.value) > MAX_YAML_NUMBER:
                raise _OverBudget(f"a number longer than {MAX_YAML_NUMBER} characters")
            return constructor(loader, node)

        return construct

    for tag, constructor in (
        ("tag:yaml.org,2002:int", yaml.constructor.SafeConstructor.construct_yaml_int),
        ("tag:yaml.org,2002:float", yaml.constructor.SafeConstructor.construct_yaml_float),
    ):
        BoundedSafeLoader.add_constructor(tag, number(constructor))
    _loader = BoundedSafeLoader
    return _loader
