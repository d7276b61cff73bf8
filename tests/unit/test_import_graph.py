"""The package's import graph: imports point down the layers, and there is no cycle.

Every ``import`` of the package's own modules counts, including those inside
functions (lazy imports): a lazy import saves start-up time, it does not change
which way a dependency points. Imports under ``if TYPE_CHECKING:`` must point
down too, but do not make a cycle: a helper module may name its owner's class
in annotations (``store/writing.py`` names ``LocalStore``) without importing it.
"""

from __future__ import annotations

import ast
import fnmatch
import graphlib
from pathlib import Path

import pytest

import git_theta_filter

PACKAGE = Path(git_theta_filter.__file__).parent

# The layers, lowest first. A module may import modules of its own layer and of
# the layers below it, never above. Names are relative to the package ("" is the
# package itself); a root module that no pattern names is "core".
LAYERS: list[tuple[str, list[str]]] = [
    # Neutral building blocks: errors, dtypes, sizes, progress, locks, pkt-line framing,
    # text made safe for a terminal, worker threads made on first use.
    (
        "base",
        [
            "version",
            "errors",
            "dtypes",
            "units",
            "progress",
            "locks",
            "pktline",
            "terminal",
            "threads",
            "filter_wire",
            "filter_prompt",
        ],
    ),
    # Object stores: know objects and where they are, not git config or the terminal.
    ("store", ["store", "store.*"]),
    # The manifest's text format (docs/manifest.md), which every format parser fills in.
    ("manifest", ["manifest"]),
    # File formats: bytes to skeleton + tensors and back.
    ("formats", ["formats", "formats.*"]),
    # Every other root module: git, history, clean/smudge, sync, merge, statistics, the API.
    ("core", []),
    # Entry points over the core: the command line, git-remote-theta, the training
    # frameworks' callbacks, and the package's lazy API exports.
    # The filter's client and server (filter_wire.py, their protocol, is in the base layer).
    (
        "entry points",
        [
            "cli",
            "cli.*",
            "remote_helper",
            "integrations",
            "integrations.*",
            "",
            "filter_client",
            "filter_server",
        ],
    ),
]


def layer_of(module: str) -> int:
    for rank, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
            return rank
    if module and "." not in module:
        return [name for name, _ in LAYERS].index("core")
    raise AssertionError(f"module {module!r} is in no layer: add it to LAYERS")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def typing_only_imports(tree: ast.AST) -> set[ast.AST]:
    """The import statements inside ``if TYPE_CHECKING:`` blocks."""
    guarded: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            for statement in node.body:
                guarded.update(ast.walk(statement))
    return guarded


def imported_modules(
    module: str, tree: ast.AST, modules: set[str], is_package: bool, *, typing_only: bool = True
) -> set[str]:
    """The package's modules that ``tree`` imports, by name relative to the package;
    without ``typing_only``, leaving out the imports made for type checkers alone."""
    here = module.split(".") if module else []
    package = here if is_package else here[:-1]
    skipped = set() if typing_only else typing_only_imports(tree)
    found = set()
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == PACKAGE.name:
                target = node.module.removeprefix(PACKAGE.name).lstrip(".")
            else:
                continue
            for alias in node.names:  # `from . import api` imports a module
                name = f"{target}.{alias.name}" if target else alias.name
                found.add(name if name in modules else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE.name:
                    found.add(alias.name.removeprefix(PACKAGE.name).lstrip("."))
    return (found & modules) - {module}


def import_graph(*, typing_only: bool = True) -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {
        module: imported_modules(
            module,
            ast.parse(path.read_text()),
            set(paths),
            path.name == "__init__.py",
            typing_only=typing_only,
        )
        for module, path in paths.items()
    }


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(module)
    )


def a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_covers_the_package(graph: dict[str, set[str]]) -> None:
    assert {"", "cli", "store.local", "formats.layout", "filter", "remotes"} <= set(graph)
    assert "store.base" in graph["store.transfer"]
    assert "api" in graph[""], "the package's lazy `from . import api` counts"
    assert "store.local" in graph["store.writing"], "TYPE_CHECKING imports count for layers"
    assert "store.local" not in import_graph(typing_only=False)["store.writing"]


def test_no_module_imports_from_a_higher_layer(graph: dict[str, set[str]]) -> None:
    assert upward_imports(graph) == []


def test_there_is_no_import_cycle() -> None:
    assert a_cycle(import_graph(typing_only=False)) is None


def test_the_checks_find_an_upward_import_and_a_cycle() -> None:
    planted = {
        "store.transfer": {"cli._output", "errors"},
        "formats.base": {"clean"},
        "cli._output": set(),
        "errors": set(),
        "clean": {"formats.base"},
    }
    assert upward_imports(planted) == [
        "formats.base (formats) imports clean (core)",
        "store.transfer (store) imports cli._output (entry points)",
    ]
    cycle = a_cycle(planted)
    assert cycle is not None and set(cycle) == {"clean", "formats.base"}


def test_the_filter_process_command_is_a_shell() -> None:
    """cli/filter_process.py parses nothing and decides nothing: the filter is filter.py,
    its start-up filter_session.py, and git's protocol filter_protocol.py."""
    path = PACKAGE / "cli" / "filter_process.py"
    tree = ast.parse(path.read_text())
    defined = [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    assert defined == ["register", "run", "serve_git"]
    assert len(path.read_text().splitlines()) <= 60
