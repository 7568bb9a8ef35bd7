"""The package layering, read from the source: arrows point down only, and no import cycles.

    dcwatch (core)  <-  dcwatch.agent, dcwatch.exporters (the node agent)
                    <-  dcwatch.detectors (the analyzer)

The core imports nothing above it; the agent and the analyzer never import each other. Every
import counts, also those inside functions and under ``TYPE_CHECKING``: a lazy import is still
a dependency. ``dcwatch.cli`` (and ``__main__``) is the one exception: the dispatcher at the top
loads each daemon's entry point.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# package prefix -> folder in the repository (pyproject's package-dir mapping)
ROOTS = {
    "dcwatch": REPO / "dcwatch",
    "dcwatch.agent": REPO / "agent",
    "dcwatch.exporters": REPO / "exporters",
    "dcwatch.detectors": REPO / "detectors",
}
DISPATCHER = {"dcwatch.cli", "dcwatch.__main__"}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for prefix, root in ROOTS.items():
        for path in root.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if prefix == "dcwatch" and len(rel.parts) > 1:
                continue  # dcwatch/ has no subfolders of its own
            found[".".join([prefix, *parts])] = path
    return found


MODULES = modules()


def layer(module: str) -> str:
    for name in ("dcwatch.agent", "dcwatch.exporters", "dcwatch.detectors"):
        if module == name or module.startswith(name + "."):
            return name
    return "dcwatch"


def imports_of(module: str, path: Path) -> Iterator[str]:
    """The dcwatch modules that ``module`` imports anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for t in targets:
            if t in MODULES and t != module:
                yield t


GRAPH = {m: set(imports_of(m, p)) for m, p in MODULES.items()}
FORBIDDEN = {
    "dcwatch": {"dcwatch.agent", "dcwatch.exporters", "dcwatch.detectors"},
    "dcwatch.exporters": {"dcwatch.agent", "dcwatch.detectors"},
    "dcwatch.agent": {"dcwatch.detectors"},
    "dcwatch.detectors": {"dcwatch.agent", "dcwatch.exporters"},
}


def test_the_walk_sees_every_package() -> None:
    assert {layer(m) for m in MODULES} == set(FORBIDDEN)
    assert "dcwatch.exporters.gpu.collector" in MODULES and "dcwatch.settings" in MODULES
    assert "dcwatch.settings" in GRAPH["dcwatch.agent.config"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m not in DISPATCHER))
def test_imports_point_down(module: str) -> None:
    bad = sorted(t for t in GRAPH[module] if layer(t) in FORBIDDEN[layer(module)])
    assert not bad, f"{module} ({layer(module)}) imports {bad}"


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(GRAPH)))
    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_agent_loads_no_numerical_stack() -> None:
    # What `dcwatch agent` imports, with every collector registered: no numpy, pandas, sklearn.
    code = (
        "import sys, dcwatch.agent.__main__, dcwatch.agent.app\n"
        "from dcwatch.exporters import registry\n"
        "[e.cls for e in registry.entries()]\n"
        "heavy = [m for m in ('numpy', 'pandas', 'sklearn', 'scipy', 'statsmodels') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
