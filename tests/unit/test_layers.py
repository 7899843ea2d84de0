"""The package's layering: no import cycle, no import from a lower layer into a higher one.

Runs in: any (reads the sources; imports nothing of rusmd but its docstring).

The layer order is written once, in ``rusmd/__init__.py``'s docstring; this
test reads it from there. Imports are found in the source (every ``import``
and ``from … import`` statement, at module level or inside a function), so
an import that would only run on one code path still counts. Imports under
``if TYPE_CHECKING:`` never run: they are left out of the cycle check, but a
lower layer may not name a higher layer's types either, so they count for
the layer check.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import rusmd

PACKAGE = Path(rusmd.__file__).parent
LAYER_LINE = re.compile(r"^\s*\d+\.\s+``(\w+)``", re.MULTILINE)


@dataclass(frozen=True)
class Edge:
    """One import of a rusmd module by another."""

    source: str
    target: str
    line: int
    typing_only: bool
    in_function: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    yield base
    yield from (f"{base}.{alias.name}" for alias in node.names)


def edges(known: dict[str, Path]) -> list[Edge]:
    found: list[Edge] = []
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        stack: list[tuple[ast.AST, bool, bool]] = [(ast.parse(path.read_text()), False, False)]
        while stack:
            node, typing_only, in_function = stack.pop()
            for child in ast.iter_child_nodes(node):
                child_typing = typing_only or (
                    isinstance(child, ast.If) and _is_type_checking(child)
                )
                child_function = in_function or isinstance(
                    child, ast.FunctionDef | ast.AsyncFunctionDef
                )
                if isinstance(child, ast.Import | ast.ImportFrom):
                    for target in _targets(child, name, is_package):
                        if target in known and target != name:
                            found.append(
                                Edge(name, target, child.lineno, child_typing, child_function)
                            )
                stack.append((child, child_typing, child_function))
    return found


def layers() -> list[str]:
    return LAYER_LINE.findall(rusmd.__doc__ or "")


def layer_of(module: str, order: list[str]) -> int | None:
    """The index of ``module``'s layer; None for the package root itself."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return order.index(parts[1]) if parts[1] in order else -1


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_every_package_of_rusmd_has_a_layer_in_the_package_docstring() -> None:
    order = layers()
    top_level = {name.split(".")[1] for name in modules() if "." in name} - {"__main__"}
    assert not top_level - set(order), (
        f"rusmd/__init__.py lists no layer for {top_level - set(order)}"
    )
    assert len(order) == len(set(order)), f"a layer is listed twice: {order}"


def test_no_module_imports_from_a_higher_layer() -> None:
    order = layers()
    known = modules()
    wrong = []
    for edge in edges(known):
        source, target = layer_of(edge.source, order), layer_of(edge.target, order)
        if edge.source == "rusmd.__main__" or source is None or target is None:
            continue
        if target > source:
            wrong.append(
                f"{known[edge.source].relative_to(PACKAGE.parent)}:{edge.line}: "
                f"{edge.source} ({order[source]}) imports {edge.target} ({order[target]})"
            )
    assert not wrong, "imports from a higher layer:\n" + "\n".join(wrong)


def test_rusmd_has_no_import_cycle() -> None:
    graph: dict[str, set[str]] = {name: set() for name in modules()}
    for edge in edges(modules()):
        if not edge.typing_only:
            graph[edge.source].add(edge.target)
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" ↔ ".join(c) for c in found)


def test_the_daemon_never_imports_its_client() -> None:
    known = modules()
    wrong = []
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names.append(getattr(node, "module", None) or "")
                if any(n == "rusmctl" or n.startswith("rusmctl.") for n in names):
                    wrong.append(f"{name}:{node.lineno}")
    assert not wrong, f"rusmd imports rusmctl at {wrong}"


def test_cycle_finder_reports_a_cycle_and_accepts_a_chain() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_every_import_inside_a_function_says_why() -> None:
    """An import at call time hides a dependency; only a documented reason allows one.

    The reasons are fork safety (the main process must never load wasmtime,
    lmdb or the worker's runtime, so the worker's entry and the CLI's
    offline commands import them once they run) and start-up cost. The
    reason is a comment on the import's line or the line above it.
    """
    undocumented = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    here, above = lines[node.lineno - 1], lines[node.lineno - 2]
                    if "#" not in here and not above.strip().startswith("#"):
                        undocumented.append(f"{name}:{node.lineno}: {here.strip()}")
    assert not undocumented, "imports inside a function with no reason:\n" + "\n".join(undocumented)
