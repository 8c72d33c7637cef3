"""The package's import graph between its units (a top-level module, or a subpackage as a whole),
read from the source with `ast` (function-level imports included), and drawn as Mermaid text for
docs/architecture.md. Imports nothing of quantperf: the architecture test and
scripts/import_graph.py both read the graph here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
START, END = "<!-- import-graph:start -->", "<!-- import-graph:end -->"


def unit(path: Path, package: Path = PACKAGE) -> str:
    """A module's architectural unit: the top-level module, or the subpackage it sits in."""
    rel = path.relative_to(package)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_units(path: Path, package: Path = PACKAGE) -> set[str]:
    """Units of the package imported anywhere in a file (relative and absolute imports)."""
    rel = path.relative_to(package)
    depth = len(rel.parts) - 1  # 0 for quantperf/x.py, 1 for quantperf/pkg/x.py
    name = package.name
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                up = node.level - 1  # levels above the file's own package
                if up > depth:
                    continue
                parts = list(rel.parts[:depth - up]) + (node.module.split(".") if node.module else [])
                out.update([parts[0]] if parts else [a.name for a in node.names])
            elif node.module and node.module.startswith(f"{name}."):
                out.add(node.module.split(".")[1])
            elif node.module == name:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith(f"{name}."))
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """unit -> the other units it imports (only names that are units of the package)."""
    units = {unit(p, package) for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {u: set() for u in units}
    for path in package.rglob("*.py"):
        me = unit(path, package)
        graph[me].update(u for u in imported_units(path, package) if u != me and u in units)
    return graph


def mermaid(graph: dict[str, set[str]] | None = None) -> str:
    """The graph as a Mermaid flowchart (an importer points at what it imports), sorted so the
    text only changes when an import between units does."""
    graph = import_graph() if graph is None else graph
    lines = ["```mermaid", "flowchart TD"]
    for src in sorted(graph):
        if not graph[src]:
            lines.append(f"    {_node(src)}")
        lines += [f"    {_node(src)} --> {_node(dst)}" for dst in sorted(graph[src])]
    return "\n".join(lines + ["```"])


def _node(name: str) -> str:
    # a Mermaid id may not start with an underscore (and `graph` is a keyword): the label keeps the name
    return f'm_{name.strip("_")}["{name}"]' if name.startswith("_") else name


def with_graph(text: str, graph_text: str | None = None) -> str:
    """`text` with the block between the import-graph markers replaced by the generated graph."""
    if START not in text or END not in text:
        raise ValueError(f"no {START} ... {END} block to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{mermaid() if graph_text is None else graph_text}\n{END}{tail}"


def block(text: str) -> str | None:
    """The text between the markers (stripped), or None where the markers are absent."""
    if START not in text or END not in text:
        return None
    return text.split(START, 1)[1].split(END, 1)[0].strip()
