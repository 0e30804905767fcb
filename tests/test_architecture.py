"""The layering of docs/architecture.md holds: no upward import, no import cycle, and
`import searchprune` stays light."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("searchprune", "envs")
HEAVY = ("sklearn", "scipy", "stable_baselines3", "ray", "deap", "cma", "matplotlib", "envs")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (module level and inside functions)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from a.b import c" imports module a.b.c when c is a module
                imported = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for item in imported:
                found = _resolve(item, modules)
                if found and found != name and (found == item or item == imported[0]):
                    targets.add(found)
        graph[name] = targets
    return graph


def documented_layers() -> list[list[str]]:
    """The ```layers block of docs/architecture.md, top layer first."""
    text = (REPO / "docs" / "architecture.md").read_text()
    match = re.search(r"```layers\n(.*?)```", text, re.S)
    assert match, "docs/architecture.md lost its ```layers block"
    return [
        line.split("#")[0].split()
        for line in match.group(1).splitlines()
        if line.split("#")[0].strip()
    ]


def layer_of(module: str, layers: list[list[str]]) -> int:
    """Height of ``module``'s layer (0 = bottom), by its longest matching name (a package
    root such as ``searchprune`` names only its ``__init__``, so that a new module must be
    placed in a layer explicitly)."""
    best, height = -1, -1
    for index, names in enumerate(reversed(layers)):
        for name in names:
            covers = module == name or (name != "searchprune" and module.startswith(name + "."))
            if covers and len(name) > best:
                best, height = len(name), index
    assert height >= 0, f"{module} is in no layer of docs/architecture.md; add it there"
    return height


def upward_imports(graph: dict[str, set[str]], layers: list[list[str]]) -> list[str]:
    return sorted(
        f"{module} (layer {layer_of(module, layers)}) imports {target} "
        f"(layer {layer_of(target, layers)})"
        for module, targets in graph.items()
        for target in targets
        if layer_of(target, layers) > layer_of(module, layers)
    )


def cycles_of(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle met by a depth-first walk (empty when the graph is acyclic)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert upward_imports(import_graph(), documented_layers()) == []


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles_of(import_graph()) == []


def test_a_planted_upward_import_and_cycle_are_caught() -> None:
    graph = import_graph()
    graph["searchprune.core.masks"].add("searchprune.runner")
    found = upward_imports(graph, documented_layers())
    assert len(found) == 1 and found[0].startswith("searchprune.core.masks")
    assert any({"searchprune.core.masks", "searchprune.runner"} <= set(c) for c in cycles_of(graph))
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("searchprune.brand_new_module", documented_layers())


def test_importing_searchprune_loads_no_heavy_package() -> None:
    code = (
        "import sys, searchprune; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", out
