"""The package's layers: imports point one way, and no module imports itself back.

Every ``import`` of the package's modules, including those inside functions, is read from the
source. The layers, bottom to top, are the shared modules (checks, the compile switch, the
host-read switch, errors, noise), ``manifolds``, ``integrators``, ``sampling``, ``testing``,
``optim``, ``nn`` and ``cli``; a module may import its own layer and those below it, never one
above, and the import graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "manifold_langevin"
LAYERS = ["_shared", "manifolds", "integrators", "sampling", "testing", "optim", "nn", "cli"]
SHARED = {"_checks", "_compiling", "_host_reads", "errors", "noise"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("manifold_langevin"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("manifold_langevin"):
                target = node.module
            else:
                continue
            out.add(target)
            # "from . import x" names submodules
            for a in node.names:
                candidate = f"{target}.{a.name}"
                if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists() or (
                    PACKAGE.parent / candidate.replace(".", "/") / "__init__.py"
                ).exists():
                    out.add(candidate)
    return out


GRAPH = {
    _module_name(p): _imports(p, _module_name(p))
    for p in PACKAGE.rglob("*.py")
    if "__pycache__" not in p.parts
}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # the package itself: its __init__ gathers the public names
    head = parts[1]
    if head in SHARED:
        return 0
    return LAYERS.index(head) if head in LAYERS else None


def test_the_graph_covers_the_package():
    assert len(GRAPH) > 40
    assert "manifold_langevin.optim.cola" in GRAPH
    assert "manifold_langevin.integrators.substeps" in GRAPH["manifold_langevin.optim.updates"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    own = _layer(module)
    if own is None:
        return
    for target in GRAPH[module]:
        other = _layer(target)
        if other is None:
            assert target == "manifold_langevin", f"{module} imports {target}"
            pytest.fail(f"{module} imports the package root; import the module that holds it")
        assert other <= own, f"{module} ({LAYERS[own]}) imports {target} ({LAYERS[other]})"


def test_no_import_cycles():
    modules = set(GRAPH)

    def edges(m):
        return [t for t in GRAPH[m] if t in modules and t != m]

    # a package imports its own submodules from __init__: those edges are structure, not cycles
    def is_parent(a, b):
        return b.startswith(a + ".")

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in edges(m):
            if is_parent(m, t) or is_parent(t, m):
                continue
            if state.get(t) == 1:
                cycle = [*stack[stack.index(t) :], t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m)
