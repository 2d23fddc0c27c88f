"""Layout rules for the ``flowrbc`` package, read from the source with ``ast`` (nothing is imported).

No import cycles. Nodes are the package's modules (``flowrbc/x/__init__.py`` is module
``flowrbc.x``). Every import statement is an edge, wherever it stands: module level, inside a
function (an import deferred for speed still ties the two modules together) or under
``if TYPE_CHECKING``. Each imported name points at the deepest module it spells out:
``import flowrbc.a.b`` names ``flowrbc.a.b``; ``from flowrbc.a import b`` names ``flowrbc.a.b``
when that is a module, else ``flowrbc.a``; relative imports are resolved first.

The parent packages Python initialises on the way (``flowrbc``, ``flowrbc.a``) are not edges.
A parent always starts initialising before its children, and a child importing a sibling by its
full module path gets that module whatever point the parent's ``__init__`` has reached. So a
package ``__init__`` re-exporting its children, and children importing siblings, is no cycle.
A child importing the package itself (``from flowrbc.models import build_model`` inside
``flowrbc/models/``) is an edge to the ``__init__``, which imports the child back: that cycle is
reported, since the names it asks for exist only once the ``__init__`` has run far enough.

Small files. No module of the package is over ``MAX_LINES`` lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flowrbc"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package modules that one import statement names (see the module docstring)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    base = node.module or ""
    if node.level:  # relative: drop one component per level, counting from the current package
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    found = set()
    for alias in node.names:
        child = f"{base}.{alias.name}"
        if child in known:
            found.add(child)
        elif base in known:
            found.add(base)
    return found


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``source`` (module ``module``) imports, itself left out."""
    targets = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            targets |= _imported(node, module, is_package, known)
    return targets - {module}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    modules = _modules()
    known = set(modules)
    return {
        module: imports_of(path.read_text(encoding="utf-8"), module, path.name == "__init__.py", known)
        for module, path in modules.items()
    }


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module: each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def shortest_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One shortest cycle through the component's first module, staying inside the component."""
    start, inside = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & inside):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


KNOWN = {"flowrbc", "flowrbc.errors", "flowrbc.models", "flowrbc.models.config", "flowrbc.models.heads"}


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import flowrbc.models.config as c", {"flowrbc.models.config"}),  # not its parents
        ("from flowrbc.models.config import ModelConfig", {"flowrbc.models.config"}),
        ("from flowrbc.models import heads, build_model", {"flowrbc.models.heads", "flowrbc.models"}),
        ("from flowrbc import errors", {"flowrbc.errors"}),
        ("def f():\n    from flowrbc.models import build_model", {"flowrbc.models"}),
        ("if TYPE_CHECKING:\n    import flowrbc.errors", {"flowrbc.errors"}),
        ("from . import config", {"flowrbc.models.config"}),
        ("from ..errors import FlowError", {"flowrbc.errors"}),
        ("import numpy\nfrom flowrbc.models.pooling import pool", set()),  # itself: no edge
    ],
)
def test_imports_of_names_the_deepest_module(source, expected):
    assert imports_of(source, "flowrbc.models.pooling", False, KNOWN | {"flowrbc.models.pooling"}) == expected


def test_a_package_init_resolves_relative_imports_from_itself():
    assert imports_of("from .config import ModelConfig", "flowrbc.models", True, KNOWN) == {"flowrbc.models.config"}


def test_cycles_are_found_and_spelled_out():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert shortest_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = [" -> ".join(shortest_cycle(graph, c)) + f"  (component: {', '.join(c)})"
              for c in strongly_connected(graph)]
    assert not cycles, "import cycles between flowrbc modules:\n" + "\n".join(cycles)


def test_no_module_is_over_the_line_limit():
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in _modules().items()}
    long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
