"""The floors the README draws: every project import runs to the same floor or below, and no
module imports itself back through a circle. Read from the source (``ast``), so it also sees
imports inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

# Bottom up; a module's floor is that of the longest prefix listed.
FLOORS: dict[str, int] = {
    "detection.core": 0,
    "detection.data": 0,
    "eval": 1,
    "proposals": 2,
    "classifiers": 2,
    "detection": 3,
    "benchmarks": 3,
}
PACKAGES = ("detection", "proposals", "classifiers", "eval", "benchmarks")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> int:
    prefix = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)
    return FLOORS[prefix]


def project_imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    modules = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_every_import_runs_to_its_own_floor_or_below() -> None:
    upward = [
        f"{source} (floor {floor(source)}) imports {target} (floor {floor(target)})"
        for source, targets in project_imports().items()
        for target in targets
        if floor(target) > floor(source)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circles() -> None:
    graph = project_imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def test_the_checker_sees_the_packages() -> None:
    graph = project_imports()
    assert "detection.pipeline" in graph and "classifiers.ensemble" in graph["detection.pipeline"]
    assert floor("detection.core.boxes") == 0 and floor("detection.bench.detection") == 3 and floor("eval.detection") == 1
