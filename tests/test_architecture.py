"""The package's import graph has floors and no loop; ``import hsbs_lib`` stays cheap.

Floors, bottom to top (a module may import its own floor and the floors below, never one above):

0. ``constants``, ``config``, ``losses``, ``data``, ``outputs``, ``extras``: values, recipes, loss functions, datasets and
   pipelines, the output rule;
1. ``models``: the registry, backbones and one module per method;
2. ``engine``: building, training, evaluating, reading runs, comparing;
3. ``viz``: plotting;
4. the commands: ``cli``, ``bench``, ``demo``, ``tutorial``, ``inference``, ``exercises``, ``_grading``.

The package's own modules are imported at the top of a module, never inside a function, so this graph is
the whole truth about who depends on whom.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hsbs_lib"

FLOORS = {
    "hsbs_lib": 0,                # the package's name and version; its public nouns are imported lazily
    "hsbs_lib.constants": 0,
    "hsbs_lib.config": 0,
    "hsbs_lib.losses": 0,
    "hsbs_lib.data": 0,
    "hsbs_lib.outputs": 0,        # the output rule every writing command follows
    "hsbs_lib.extras": 0,         # optional dependencies and the extra that brings each
    "hsbs_lib.models": 1,
    "hsbs_lib.engine": 2,
    "hsbs_lib.viz": 3,
    "hsbs_lib.cli": 4,
    "hsbs_lib.bench": 4,
    "hsbs_lib.demo": 4,
    "hsbs_lib.tutorial": 4,
    "hsbs_lib.inference": 4,
    "hsbs_lib.exercises": 4,
    "hsbs_lib._grading": 4,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def floor(module: str) -> int:
    prefix = max((key for key in FLOORS if module == key or (key != "hsbs_lib" and module.startswith(key + "."))),
                 key=len, default=None)
    assert prefix is not None, f"{module} has no floor: add its top-level name to FLOORS"
    return FLOORS[prefix]


def imported_modules(node: ast.AST) -> list[str]:
    """The package modules an import statement names (``from a.b import c`` names a.b.c when c is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "hsbs_lib"]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "hsbs_lib":
        names = [f"{node.module}.{alias.name}" for alias in node.names]
        return [name if name in MODULES else node.module for name in names]
    return []


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """module -> package modules it imports at module level; and (module, line, target) of imports in functions."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    hidden = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inside = {id(child) for function in functions for child in ast.walk(function) if child is not function}
        for node in ast.walk(tree):
            for target in imported_modules(node):
                assert target in MODULES, f"{name} imports {target}, which is not a module of the package"
                if id(node) in inside:
                    hidden.append((name, node.lineno, target))
                elif target != name:
                    graph[name].add(target)
    return graph, hidden


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as a list of modules (first == last), or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_every_module_has_a_floor():
    for name in MODULES:
        floor(name)


def test_the_import_graph_has_no_loop():
    graph, _ = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_import_goes_up_a_floor():
    graph, _ = import_graph()
    upward = [f"{source} (floor {floor(source)}) imports {target} (floor {floor(target)})"
              for source, targets in graph.items() for target in sorted(targets) if floor(target) > floor(source)]
    assert not upward, "\n".join(upward)


def test_the_package_imports_its_own_modules_at_module_level():
    _, hidden = import_graph()
    assert not hidden, "imports hidden inside functions:\n" + "\n".join(
        f"{name}:{line} imports {target}" for name, line, target in hidden)


def test_the_checker_sees_loops_and_floors():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert floor("hsbs_lib.data.datasets.rafdb") == 0 and floor("hsbs_lib.engine.runs") == 2
    with pytest.raises(AssertionError, match="no floor"):
        floor("hsbs_lib.somewhere_new")


def test_import_hsbs_lib_is_cheap():
    code = ("import sys, hsbs_lib; loaded = sorted(m for m in sys.modules if m.startswith('hsbs_lib.')); "
            "print(loaded, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == "[] False", out
