"""The package reads top to bottom: no module imports one from a layer above it, and no
import cycle (imports inside functions count too). The layers are drawn in
docs/architecture.md ("Layers")."""

from __future__ import annotations

import ast
from pathlib import Path

import rayeffi

PACKAGE = Path(rayeffi.__file__).parent

LAYERS = [  # lowest first; a module belongs to the first entry its dotted name starts with
    ("ground", ("rayeffi._lazy", "rayeffi.errors", "rayeffi.device", "rayeffi.checkpoint", "rayeffi.weights", "rayeffi.task",
                "rayeffi.health", "rayeffi.driver.supervise", "rayeffi.upload")),
    ("recipe", ("rayeffi.recipe", "rayeffi.techniques.registry", "rayeffi.techniques.dsd.config",
                "rayeffi.techniques.distill.config")),  # pure configuration, in its technique's folder
    ("models and data", ("rayeffi.models", "rayeffi.data")),
    ("slots", ("rayeffi.parallel", "rayeffi.precision", "rayeffi.techniques")),
    ("worker", ("rayeffi.worker",)),
    ("parameter-server actors", ("rayeffi.param_server",)),
    ("stages", ("rayeffi.stages",)),
    ("entry points", ("rayeffi.api", "rayeffi.result", "rayeffi.driver", "rayeffi.submit", "rayeffi.cli", "rayeffi.__main__",
                      "rayeffi.starter", "rayeffi.evaluate",
                      "rayeffi.bench", "rayeffi.report", "rayeffi.tracking",
                      "rayeffi")),
]


def _layer(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        # "rayeffi" alone is the package's __init__; any other prefix takes its whole folder
        if any(module == prefix or (prefix != "rayeffi" and module.startswith(prefix + ".")) for prefix in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The rayeffi modules ``path`` imports (``from a.b import c`` counts a.b.c when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in modules}
    return {name for name in out if name in modules}


def _graph():
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def test_no_module_imports_one_from_a_layer_above():
    upward = [f"{module} ({LAYERS[_layer(module)][0]}) -> {target} ({LAYERS[_layer(target)][0]})"
              for module, targets in _graph().items() for target in targets
              if _layer(target) > _layer(module) and not target.startswith(module + ".")]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycle():
    graph = _graph()
    # a package's __init__ re-exporting its own modules is not a cycle between ideas
    graph = {m: {t for t in targets if t != m and not t.startswith(m + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(module, path):
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_test_modules_have_unique_names():
    """pytest's default import mode collects tests/unit/x.py and tests/ray/x.py as one module 'x'."""
    tests = Path(__file__).resolve().parents[1]
    names = [path.name for path in tests.rglob("test_*.py")]
    assert sorted({name for name in names if names.count(name) > 1}) == []
