"""Architecture: the modules of deid_sidecar form layers, and layers import downward only.

A cycle between modules means neither can be understood, tested or changed without the other, and
it usually hides behind an import moved into a function. So every import counts here: module level,
function-local, and those under `if TYPE_CHECKING:` (a type a module needs is a dependency too).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import deid_sidecar

PACKAGE = deid_sidecar.__name__
ROOT = Path(deid_sidecar.__file__).resolve().parent

Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """Every module of the package that `module` imports, wherever the import statement is."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield base
            # `from pkg import mod` imports the module pkg.mod, not only pkg.
            yield from (f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)


def import_graph() -> Graph:
    paths = sorted(ROOT.rglob("*.py"))
    known = {module_name(path) for path in paths}
    graph: Graph = {}
    for path in paths:
        module = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        imports = imported_modules(tree, module, path.name == "__init__.py", known)
        graph[module] = {name for name in imports if name in known and name != module}
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """The cycles a depth-first walk meets, each a path back to its start: none if and only if none."""
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str], on_path: set[str]) -> None:
        for target in sorted(graph[module]):
            if target in on_path:
                cycles.append([*path[path.index(target) :], target])
            elif target not in done:
                path.append(target)
                on_path.add(target)
                visit(target, path, on_path)
                on_path.discard(path.pop())
        done.add(module)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start], {start})
    # Each listed once: the same modules met from another start are the same cycle.
    unique: dict[frozenset[str], list[str]] = {}
    for cycle in cycles:
        unique.setdefault(frozenset(cycle), cycle)
    return list(unique.values())


def test_the_graph_sees_every_kind_of_import() -> None:
    """Function-local, TYPE_CHECKING, relative and `from package import module` imports all count."""
    source = """
from typing import TYPE_CHECKING
from . import b
if TYPE_CHECKING:
    from deid_sidecar.x.c import C
def f():
    import deid_sidecar.x.d
    from ..y import e
"""
    known = {"deid_sidecar.x.a", "deid_sidecar.x.b", "deid_sidecar.x.c", "deid_sidecar.x.d", "deid_sidecar.y"}
    found = set(imported_modules(ast.parse(source), "deid_sidecar.x.a", False, known)) & known
    assert found == {"deid_sidecar.x.b", "deid_sidecar.x.c", "deid_sidecar.x.d", "deid_sidecar.y"}


def test_a_cycle_is_found_and_named() -> None:
    graph: Graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_modules_import_downward_only() -> None:
    """No module imports, however indirectly, a module that imports it: the package is layered.

    Shared pieces live in the lower module (e.g. region primitives under the anonymizers, the page
    rendering under the pages); a dispatch that needs every variant sits above them all.
    """
    graph = import_graph()
    assert len(graph) > 20 and f"{PACKAGE}.anonymize.masks" in graph  # the whole package was read
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (a layer must import downward only):\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles
    )
