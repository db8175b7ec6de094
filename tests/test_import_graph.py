"""The packages' import graph, read from the source (ast; nothing is imported).

Data flows one way (docs/internals.md): `trainer` imports neither `population` nor `evo`,
`population` does not import `evo`, nothing in `evo` imports `evo.cli` (only the console script
does), and no module imports itself back through others. Imports inside functions count as much
as those at the top; those under `if TYPE_CHECKING:` count for the layering, not for cycles (they
never run).

`import a.b` is an edge to `a.b`; `from a.b import c` to `a.b.c` where that is a module, else to
`a.b`; relative imports are resolved against the importing module's package.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer", "population", "evo")


@dataclass(frozen=True)
class Edge:
    source: str  # the importing module
    target: str  # the imported project module
    where: str  # path:line of the import statement
    typing_only: bool  # under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.where}{', TYPE_CHECKING' if self.typing_only else ''})"


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Every project module by dotted name (a package by its own name, from its __init__.py)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """(node, typing_only) for every import statement, at any depth."""
    stack = [(tree, False)]
    while stack:
        node, typing_only = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, typing_only
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend((child, True) for child in node.body)
            stack.extend((child, typing_only) for child in node.orelse)
            continue
        stack.extend((child, typing_only) for child in ast.iter_child_nodes(node))


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _project_module(name: str, modules: dict[str, Path]) -> str | None:
    """`name`, or the longest prefix of it that is a project module; None outside the project."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def import_edges(root: Path = REPO, packages=PACKAGES) -> list[Edge]:
    modules = module_files(root, packages)
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, typing_only in _imports(tree):
            where = f"{path.relative_to(root).as_posix()}:{node.lineno}"
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = _package_of(module, path).split(".")
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                           for alias in node.names]
            for name in dict.fromkeys(targets):
                target = _project_module(name, modules)
                if target is not None:
                    edges.append(Edge(module, target, where, typing_only))
    return edges


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def forbidden(edges: list[Edge], importer: str, imported: str, allow_self: bool = True) -> list[Edge]:
    return [e for e in edges if _in(e.source, importer) and _in(e.target, imported)
            and not (allow_self and _in(e.source, imported))]


def cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected component that has one (Tarjan)."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        if not e.typing_only:
            graph.setdefault(e.source, {}).setdefault(e.target, e)
            graph.setdefault(e.target, {})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []

    def connect(v: str) -> None:  # the graph is a few hundred modules: recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)

    found = []
    for component in components:
        start = min(component)
        # Breadth-first from `start` inside the component, back to `start`: the shortest cycle through it.
        parent: dict[str, Edge] = {}
        frontier = [start]
        closing = None
        while frontier and closing is None:
            nxt = []
            for v in frontier:
                for w, e in sorted(graph[v].items()):
                    if w == start:
                        closing = e
                        break
                    if w in component and w not in parent:
                        parent[w] = e
                        nxt.append(w)
                if closing is not None:
                    break
            frontier = nxt
        path = [closing]
        while path[0].source != start:
            path.insert(0, parent[path[0].source])
        found.append(path)
    return found


def describe(path: list[Edge]) -> str:
    chain = " -> ".join([path[0].source] + [e.target for e in path])
    return chain + "\n" + "\n".join(f"    {e}" for e in path)


def _fail_on(edges: list[Edge], rule: str) -> None:
    if edges:
        pytest.fail(f"{rule}, but:\n" + "\n".join(f"  {e}" for e in edges), pytrace=False)


# --- the project's graph --------------------------------------------------------------------


def test_the_graph_is_read():
    """Guards the other tests against an empty graph (a parser that finds nothing passes them all)."""
    edges = import_edges()
    pairs = {(e.source, e.target) for e in edges}
    assert {"evo.cli", "evo.run_command", "trainer.runner", "population.store"} <= set(module_files(REPO))
    assert ("evo.cli", "evo.run_command") in pairs and ("trainer.runner", "trainer.sandbox") in pairs
    assert ("evo.operators", "evo.operators.llm") in pairs  # an import inside a function counts


def test_trainer_imports_neither_population_nor_evo():
    edges = import_edges()
    _fail_on(forbidden(edges, "trainer", "population") + forbidden(edges, "trainer", "evo"),
             "trainer must import neither population nor evo")


def test_population_does_not_import_evo():
    _fail_on(forbidden(import_edges(), "population", "evo"), "population must not import evo")


def test_nothing_in_evo_imports_the_cli():
    """`evo.cli` is the console script's: a module that imports it is one import away from a cycle."""
    _fail_on(forbidden(import_edges(), "evo", "evo.cli"), "nothing in evo may import evo.cli (only the console script)")


def test_no_import_cycles():
    found = cycles(import_edges())
    if found:
        pytest.fail("import cycles (the modules, then each import with where it is):\n"
                    + "\n".join(describe(path) for path in found), pytrace=False)


# --- the checker itself ---------------------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_resolves_imports_and_names_a_cycle(tmp_path):
    root = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def f():\n    from . import c\n",  # relative, inside a function
        "pkg/c.py": "from .sub.d import name\n",  # `name` is not a module: the edge is to pkg.sub.d
        "pkg/sub/__init__.py": "",
        "pkg/sub/d.py": "import os\nfrom ..a import thing\n",
        "pkg/typing_only.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n",
        "pkg/e.py": "import pkg.typing_only\n",
    })
    edges = import_edges(root, ("pkg",))
    assert {(e.source, e.target) for e in edges} == {
        ("pkg.a", "pkg.b"), ("pkg.b", "pkg.c"), ("pkg.c", "pkg.sub.d"), ("pkg.sub.d", "pkg.a"),
        ("pkg.typing_only", "pkg.e"), ("pkg.e", "pkg.typing_only")}
    [cycle] = cycles(edges)  # the TYPE_CHECKING loop does not count
    message = describe(cycle)
    assert message.startswith("pkg.a -> pkg.b -> pkg.c -> pkg.sub.d -> pkg.a\n")
    assert "pkg/b.py:2" in message and "pkg/sub/d.py:2" in message
    assert [str(e) for e in forbidden(edges, "pkg.sub", "pkg.a")] == ["pkg.sub.d -> pkg.a (pkg/sub/d.py:2)"]
