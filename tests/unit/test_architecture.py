"""The package's shape, held to what docs/architecture.md promises: imports point one way (no
cycles, type-checking imports included), core types never import guards, the proxy or the
server, and no module grows past the size where it should be split."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "guardproxy"
# Request-level types every layer shares; they may only import each other (and the standard
# library and third-party packages).
CORE = {
    "guardproxy.answer",
    "guardproxy.asgi",
    "guardproxy.context",
    "guardproxy.outcomes",
    "guardproxy.problems",
    "guardproxy.routes",
}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """Every guardproxy module `path` imports, with the packages whose __init__ that runs. A
    module's own packages are left out: Python runs them before the module itself anyway (a
    package's __init__ that hands on its submodules' names is no cycle)."""
    own_packages = {".".join(module_name(path).split(".")[:end]) for end in range(1, module_name(path).count(".") + 1)}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            found.update(".".join(parts[:end]) for end in range(2, len(parts) + 1) if ".".join(parts[:end]) in known)
    return found - own_packages


def import_graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imports(path, known) - {name} for name, path in modules().items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_there_are_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_a_submodule_import_runs_its_package() -> None:
    graph = import_graph()
    assert "guardproxy.server" in graph["guardproxy.health"]  # via guardproxy.server.limits


@pytest.mark.parametrize("core", sorted(CORE))
def test_core_types_import_only_core_types(core: str) -> None:
    allowed = CORE | {"guardproxy"}
    assert import_graph()[core] - allowed == set()


def test_observability_holds_no_guard() -> None:
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("guardproxy.observability."):
            assert not {target for target in targets if target.startswith("guardproxy.guards")}, name


def test_no_module_is_past_the_size_where_it_should_be_split() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: size for name, size in sizes.items() if size > MAX_LINES} == {}
