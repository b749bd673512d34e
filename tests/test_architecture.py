"""The shape of the code base: modules a reader can hold in mind, and no import circle.

The import graph is read from the source (``ast``), not from a running interpreter: an edge is a
module-level ``import`` or ``from ... import`` of a ``winstar_core`` module. Imports inside a
function, and those under ``if TYPE_CHECKING:``, run later or never, so they cannot close a
circle at import time and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import winstar_core

PACKAGE = Path(winstar_core.__file__).parent
ROOT = "winstar_core"
#: a module of ``winstar_core/services`` longer than this is to be split (the aim is about 300)
MAX_SERVICE_LINES = 320


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The imports a module runs when it is imported: its top-level statements, and those of its
    top-level ``if``/``try``/``with`` blocks, except the ``if TYPE_CHECKING:`` branch (functions
    and classes are not entered: a class body's imports are rare enough to ignore)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _module_level_imports(node.body)
            found += _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += _module_level_imports(block)
        elif isinstance(node, ast.With):
            found += _module_level_imports(node.body)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``winstar_core`` modules it imports at import time."""
    modules = all_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _module_level_imports(tree.body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:  # relative: from the package this module is in
                    base = name.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # ``from pkg import sub`` imports the module ``pkg.sub`` when there is one
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                    for alias in node.names
                ]
            for target in targets:
                if target == ROOT or target.startswith(ROOT + "."):
                    while target not in modules and "." in target:  # ``import a.b.c`` of a name
                        target = target.rsplit(".", 1)[0]
                    if target in modules and target != name:
                        graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in order, the first repeated at the end), or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == grey:
                return stack[stack.index(nxt) :] + [nxt]
            if colour[nxt] == white:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = black
        return None

    for start in sorted(graph):
        if colour[start] == white:
            found = visit(start)
            if found:
                return found
    return None


def test_no_import_cycle_among_winstar_core_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_sees_the_services_imports():
    graph = import_graph()
    services = f"{ROOT}.services"
    assert f"{services}.cloud_uplinks" in graph[f"{services}.cloud"]
    assert f"{services}.common" in graph[f"{services}.cloud_digest"]  # ``from ... import common``
    assert f"{ROOT}.store.models" in graph[f"{ROOT}.store.outbox"]
    # a type-only import (under ``if TYPE_CHECKING:``) is not an edge
    assert f"{services}.cloud_uplinks" not in graph[f"{services}.rules"]


def test_service_modules_stay_small():
    too_long = {
        name: n
        for name, path in all_modules().items()
        if name.startswith(f"{ROOT}.services.")
        and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_SERVICE_LINES
    }
    assert not too_long, f"modules of winstar_core/services over {MAX_SERVICE_LINES} lines: {too_long}"


def test_every_service_module_says_what_it_is_for():
    missing = [
        name
        for name, path in all_modules().items()
        if name.startswith(f"{ROOT}.services")
        and not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not missing, f"modules without a docstring: {missing}"


def test_every_public_service_function_has_a_docstring():
    missing = []
    for name, path in all_modules().items():
        if not name.startswith(f"{ROOT}.services"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        scopes: list[tuple[str, list[ast.stmt]]] = [(name, tree.body)]
        scopes += [(f"{name}.{n.name}", n.body) for n in tree.body if isinstance(n, ast.ClassDef)]
        for where, body in scopes:
            for node in body:
                if (
                    isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and not node.name.startswith("_")
                    and not ast.get_docstring(node)
                ):
                    missing.append(f"{where}.{node.name}")
    assert not missing, f"public functions and methods without a docstring: {missing}"
