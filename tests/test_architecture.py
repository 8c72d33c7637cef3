"""The package's layering, as docs/architecture.md draws it: a module never imports one above it
(function-level imports included), no import cycle exists, no module grows past 600 lines, only
`quantperf.gate` turns a measurement into a verdict, and the drawn import graph is the real one."""

import ast

import pytest

from quantperf._graph import PACKAGE, block, import_graph, mermaid, unit

ROOT = PACKAGE.parent

# bottom to top; a unit (a top-level module or a subpackage) may import its own layer and those below
LAYERS = [
    {"status"},
    {"errors", "spec", "stats", "results", "divergence", "roofline", "config", "summary", "baselines", "envinfo",
     "corpus", "hookspec", "progress", "_graph", "fidelity", "history", "phases"},
    {"gate"},
    {"models", "trackers", "shards"},
    {"backends"},
    {"scenarios"},
    {"workers"},
    {"scheduler", "starting"},
    {"experiments", "matrix"},
    {"suite"},
    {"report"},
    {"plugin", "plugin_ab", "plugin_history", "cli", "__init__", "__main__"},
]
MAX_LINES = 600
# the verdicts only quantperf.gate decides; elsewhere they are compared against, never produced
DECISIONS = {"REGRESSED", "IMPROVED", "INCONCLUSIVE", "HOLDS", "FLIPPED"}
DECISION_WORDS = {"regressed", "improved", "inconclusive", "holds", "flipped", "slower", "faster", "unsettled"}


def _layer(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise AssertionError(f"quantperf/{name} is in no layer of the architecture: add it to LAYERS and "
                         "docs/architecture.md")


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_layered_unit_exists():
    units = {unit(p) for p in _modules()}
    missing = sorted(u for layer in LAYERS for u in layer if u not in units)
    assert not missing, f"LAYERS names units that no longer exist: {missing}"


def test_no_module_imports_a_layer_above_it():
    upward = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
              for a, deps in sorted(import_graph().items()) for b in sorted(deps) if _layer(b) > _layer(a)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = import_graph()
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


def test_every_module_states_its_job():
    missing = [str(p.relative_to(ROOT)) for p in _modules() if not ast.get_docstring(ast.parse(p.read_text("utf-8")))]
    assert not missing, "modules without a docstring saying what they are for:\n" + "\n".join(missing)


def test_no_module_is_over_600_lines():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines (split them by job):\n" + "\n".join(long)


def _decisions(tree: ast.AST) -> list[tuple[int, str]]:
    """Where a module produces a verdict: a `Status.<decision>` used anywhere but in a comparison,
    or a decision word assigned to a `status`/`verdict` field, put under such a key, or returned."""
    compared: set[int] = set()  # read, not produced: a comparison's operands, a lookup table's keys
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                compared.update(id(n) for n in ast.walk(side))
        elif isinstance(node, ast.Dict):
            compared.update(id(k) for k in node.keys if k is not None)
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Status"
                and node.attr in DECISIONS and id(node) not in compared):
            found.append((node.lineno, f"Status.{node.attr}"))

        def word(value):
            return isinstance(value, ast.Constant) and value.value in DECISION_WORDS

        if isinstance(node, ast.Assign) and word(node.value) and any(
                isinstance(t, ast.Attribute) and t.attr in ("status", "verdict") for t in node.targets):
            found.append((node.lineno, f"{node.value.value!r} assigned"))
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value in ("status", "verdict") and word(v):
                    found.append((node.lineno, f"{v.value!r} under {k.value!r}"))
        if isinstance(node, ast.Return) and word(node.value):
            found.append((node.lineno, f"returns {node.value.value!r}"))
    return found


def test_only_the_gate_decides_a_verdict():
    # status.py defines the words and maps the old ones of stored files: it decides nothing
    outside = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in _modules() if unit(p) not in ("gate", "status")
               for line, what in _decisions(ast.parse(p.read_text(encoding="utf-8")))]
    assert not outside, "verdicts decided outside quantperf/gate (move the decision there):\n" + "\n".join(outside)


def test_the_decision_check_can_fail():
    """The check above is not vacuous: each way of deciding outside the gate is caught."""
    code = ("def f(o, d):\n    o.status = Status.REGRESSED\n    o.verdict = 'flipped'\n"
            "    d = {'status': 'improved'}\n    return 'inconclusive'\n"
            "def g(o):\n    return o.status == Status.REGRESSED or o.verdict in (Status.HOLDS,) or {Status.FLIPPED: "
            "1}\n")
    assert sorted(line for line, _ in _decisions(ast.parse(code))) == [2, 3, 4, 5]


def test_the_documented_import_graph_is_the_generated_one():
    doc = ROOT / "docs" / "architecture.md"
    if not doc.is_file():
        pytest.skip("docs/architecture.md is absent: no import graph to compare")
    drawn = block(doc.read_text(encoding="utf-8"))
    if drawn is None:
        pytest.skip("docs/architecture.md has no <!-- import-graph:start --> ... <!-- import-graph:end --> block")
    assert drawn == mermaid().strip(), ("docs/architecture.md's import graph is out of date: run "
                                        "`python scripts/import_graph.py --write docs/architecture.md`")
