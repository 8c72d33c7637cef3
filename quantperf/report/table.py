"""The one table writer of every report: aligned columns for a terminal, or a markdown table
whose cells are escaped (a `|` in a cell would end it), and the one number format of a cell."""

from __future__ import annotations


def fmt(v, digits: int = 1) -> str:
    """A table cell: `-` for a missing figure, a float to `digits` decimals, anything else as text."""
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table; a `|` in a cell is escaped, so it stays one cell."""

    def esc(v) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])


def format_table(header: list[str], rows: list[list], markdown: bool = False) -> str:
    """`rows` under `header`: a markdown table, or columns padded to their widest cell."""
    if markdown:
        return markdown_table(header, rows)
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([line.format(*header), line.format(*("-" * w for w in widths))] + [line.format(*r) for r in rows])
