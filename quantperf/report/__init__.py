"""Rendering, and nothing else: every table, page and report line quantperf prints or writes.

- table: the one table writer (terminal columns or escaped markdown) and the cell format
- text: the session summary and result tables for a terminal or markdown
- html, plots: the self-contained HTML report (and its markdown twin) over stored runs
- upgrade: the upgrade check's report and `compare`'s result
"""

from .table import fmt, format_table, markdown_table
from .text import (
    evaluation_table,
    kernel_tables,
    noise_table,
    render_markdown,
    render_terminal,
    results_table,
    summary_sections,
)

__all__ = ["evaluation_table", "fmt", "format_table", "kernel_tables", "markdown_table", "noise_table",
           "render_markdown", "render_terminal", "results_table", "summary_sections"]
