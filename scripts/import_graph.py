"""Print quantperf's import graph between units as Mermaid text, or write it into a document
between its `<!-- import-graph:start -->` and `<!-- import-graph:end -->` markers.

    python scripts/import_graph.py                              # print
    python scripts/import_graph.py --write docs/architecture.md  # fill the block in place
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's quantperf, not an installed one

from quantperf._graph import mermaid, with_graph  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", metavar="FILE", help="replace the block between the import-graph markers of FILE")
    args = ap.parse_args(argv)
    if not args.write:
        print(mermaid())
        return 0
    path = Path(args.write)
    try:
        path.write_text(with_graph(path.read_text(encoding="utf-8")), encoding="utf-8")
    except (OSError, ValueError) as exc:
        print(f"import_graph: {path}: {exc}", file=sys.stderr)
        return 2
    print(f"import_graph: updated the import graph in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
