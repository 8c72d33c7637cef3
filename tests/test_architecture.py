"""The package's layering, as the README's Architecture section draws it: a module never imports
one above it (function-level imports included), and no import cycle exists."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "quantperf"

# bottom to top; a module may import its own layer and the layers below
LAYERS = [
    {"errors", "spec", "stats", "results", "divergence", "status", "roofline", "config", "summary", "runstats", "runlevel", "noise", "gate",
     "takeaways", "baselines", "envinfo", "corpus", "hookspec", "progress"},
    {"models", "trackers", "shards"},
    {"backends", "kernel"},
    {"scenarios"},
    {"workers"},
    {"scheduler"},
    {"matrix", "sensitivity", "upgrade_env", "upgrade"},
    {"suite"},
    {"report", "htmlreport"},
    {"plugin", "cli", "__init__", "__main__"},
]


def _unit(path: Path) -> str:
    """A module's architectural unit: the top-level module, or the subpackage it sits in."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _layer(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"quantperf/{unit} is in no layer of the architecture: add it to LAYERS and the README")


def _imports(path: Path) -> set[str]:
    """Units of quantperf imported anywhere in a file (relative and absolute imports)."""
    rel = path.relative_to(PACKAGE)
    depth = len(rel.parts) - 1  # 0 for quantperf/x.py, 1 for quantperf/pkg/x.py
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                up = node.level - 1  # levels above the file's own package
                if up > depth:
                    continue
                base = list(rel.parts[:depth - up]) if up <= depth else []
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts[0]] if parts else [a.name for a in node.names]
                out.update(names)
            elif node.module and node.module.startswith("quantperf."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("quantperf."))
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(path)
        graph.setdefault(unit, set()).update(u for u in _imports(path) if u != unit and (PACKAGE / u).exists()
                                             or (PACKAGE / f"{u}.py").exists() and u != unit)
    return graph


def test_no_module_imports_a_layer_above_it():
    upward = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
              for a, deps in sorted(_graph().items()) for b in sorted(deps) if _layer(b) > _layer(a)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
