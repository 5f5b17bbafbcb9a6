"""The package's layers (ood_core/__init__.py): no upward imports, no import cycles, every module placed."""

import ast
from pathlib import Path

import ood_core

PACKAGE = Path(ood_core.__file__).resolve().parent


def _imports() -> dict[str, set[str]]:
    """Every ood_core module each module imports, at module level or inside functions."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ood_core":
                deps |= {a.name for a in node.names} if node.module == "ood_core" else {node.module.split(".")[1]}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ood_core.")}
        graph[path.stem] = deps - {path.stem}
    return graph


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules <= set(ood_core.LAYERS), f"modules without a layer: {sorted(modules - set(ood_core.LAYERS))}"


def test_no_module_imports_upward():
    upward = [f"{m} (layer {ood_core.LAYERS[m]}) imports {d} (layer {ood_core.LAYERS[d]})"
              for m, deps in _imports().items() if m != "__init__" for d in deps
              if d in ood_core.LAYERS and ood_core.LAYERS[d] > ood_core.LAYERS[m]]
    assert not upward, upward


def test_import_graph_is_acyclic():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*path, node, nxt])}")
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [])
