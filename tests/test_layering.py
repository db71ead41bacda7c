"""The package's imports run one way: entry points -> experiments / sweeps -> training ->
agents, env, evaluation, models -> data, trading rules -> config. Lazy imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cappuccino"

# Higher imports lower or equal, never higher; equal ranks may import each other but no cycle may form.
LAYERS: dict[str, int] = {
    "experiments": 6,
    "hparams_search": 6,
    "training": 5,
    "pretrain": 5,
    "tracking": 4,
    "reporting": 4,
    "agents": 3,
    "evaluation": 3,
    "env": 2,
    "models": 2,
    "data": 1,
    "trading": 7,  # the trader: it loads models, reads MLflow and studies, and tracks its session
    "report": 7,  # python -m cappuccino.report: reads MLflow, writes the report
    "trading.rules": 1,  # the order rules the environment fills and the trader sends
    "runtime": 0,
    "progress": 0,
    "sqlite_lock": 0,
    "secrets": 0,
    "config": 0,
    "errors": 0,
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    if ".".join(parts[1:3]) in LAYERS:  # a module ranked on its own, below its package
        return ".".join(parts[1:3])
    return parts[1] if len(parts) > 1 else ""


GRAPH = {name: _imports(name, path, _modules()) for name, path in _modules().items()}


def test_every_module_has_a_layer():
    assert sorted({_layer(m) for m in GRAPH if m != "cappuccino"} - set(LAYERS)) == []


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "cappuccino"))
def test_imports_go_down_the_layers(module):
    upward = [t for t in GRAPH[module] if LAYERS[_layer(t)] > LAYERS[_layer(module)]]
    assert upward == [], f"{module} imports higher layers: {upward}"


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph: each must be one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """A function-level import is an edge like any other (plant one to check)."""
    modules = {"cappuccino.config": tmp_path / "config.py", "cappuccino.training": tmp_path / "training.py"}
    modules["cappuccino.config"].write_text("def f():\n    from cappuccino.training import train\n")
    assert _imports("cappuccino.config", modules["cappuccino.config"], modules) == {"cappuccino.training"}
