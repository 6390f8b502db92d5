"""The project's import structure: every module imports, no import cycle, nothing imports tests, one-way layers.

Layers, lowest first: components -> serving -> pipelines -> monitoring -> recsys (the CLI). A module may import its
own package and the packages below it. Imports are read with `ast` wherever they sit (module level, inside
functions, under TYPE_CHECKING), so a lazy import cannot hide a cycle or a layer crossing.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"components": 0, "serving": 1, "pipelines": 2, "monitoring": 3, "recsys": 4}
PACKAGES = (*LAYERS, "feature_repo", "benchmarks")  # feature_repo imports nothing of ours; benchmarks sit on top
TRITON_MODELS = ROOT / "serving" / "templates" / "python"  # run inside Triton's stub, where the project is absent

# Known crossings still to remove: (importing module, imported package or module) -> what must move.
KNOWN_LAYER_CROSSINGS: dict[tuple[str, str], str] = {}
KNOWN_TEST_IMPORTS: dict[str, str] = {}
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def module_files() -> dict[str, Path]:
    """Dotted name -> file of every project module outside tests/ (the Triton Python models apart)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if TRITON_MODELS in path.parents:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[name] = path
    return out


def imported_names(path: Path) -> set[str]:
    """Every absolute module name `path` imports, anywhere in the file (`from a import b` gives a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import (line {node.lineno}); the project imports absolutely")
            names.add(node.module or "")
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def project_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (a name resolves to the longest module it starts with)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in imported_names(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


MODULES = module_files()
GRAPH = project_graph(MODULES)


def test_the_graph_sees_the_project():
    assert len(MODULES) > 60 and "components.bundle_ops" in MODULES and "recsys.main" in MODULES
    assert "components.evaluation_types" in GRAPH["components.evaluate"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_import_cycle():
    found = [sorted(c) for c in cycles(GRAPH) if c not in KNOWN_CYCLES]
    assert not found, f"import cycles among project modules: {found}"


def test_known_exceptions_still_exist():
    """An exception that no longer happens must leave its list (so the lists only shrink)."""
    current = set(cycles(GRAPH))
    assert not [sorted(c) for c in KNOWN_CYCLES if c not in current]
    crossings = {(name, target.split(".")[0]) for name, targets in GRAPH.items() for target in targets}
    assert not [pair for pair in KNOWN_LAYER_CROSSINGS if pair not in crossings]
    assert all(any(t.startswith("tests") for t in imported_names(MODULES[m])) for m in KNOWN_TEST_IMPORTS
               if m in MODULES)


def test_nothing_outside_tests_imports_tests():
    offenders = sorted(name for name, path in MODULES.items()
                       if name not in KNOWN_TEST_IMPORTS
                       and any(t == "tests" or t.startswith("tests.") for t in imported_names(path)))
    assert not offenders, f"project modules importing tests/: {offenders}"


def test_layers_read_one_way():
    wrong = []
    for name, targets in GRAPH.items():
        package = name.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if package == "benchmarks" or other == package:
                continue
            allowed = package in LAYERS and other in LAYERS and LAYERS[other] < LAYERS[package]
            if not allowed and (name, other) not in KNOWN_LAYER_CROSSINGS:
                wrong.append(f"{name} -> {target}")
    assert not wrong, f"imports against the layers components -> serving -> pipelines -> monitoring -> recsys: {wrong}"


def test_triton_python_models_import_nothing_of_the_project():
    """They run in Triton's Python backend stub; the bundle operations reach them as a copied file."""
    for path in sorted(TRITON_MODELS.glob("*.py")):
        ours = {n for n in imported_names(path) if n.split(".")[0] in (*PACKAGES, "tests")}
        assert not ours, f"{path.name} imports {sorted(ours)}"
    assert not {n for n in imported_names(MODULES["components.bundle_ops"]) if n.split(".")[0] in PACKAGES}


@pytest.mark.timeout(300)
def test_every_project_module_imports():
    """Import every module in one fresh interpreter (a cycle at import time, or a broken import, fails here)."""
    names = sorted(n for n in MODULES if not n.startswith("benchmarks"))  # benchmarks run as scripts
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, capture_output=True, text=True,
                            timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
