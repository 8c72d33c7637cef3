"""`quantperf` command line: `profile`, `backends`, `run`, `gate`, `noise`, `sensitivity`,
`upgrade-check`, `compare`, `changed-pins`, `newest`, `canary-report`, `report`, `merge`, `export`,
`history`. Each command group's module holds its handlers and `add_parser(subparsers)`, which
registers them."""

from __future__ import annotations

import argparse

from . import canary, export, gate, history, machine, noise, report, run, upgrade
from ._common import run_command

GROUPS = (machine, run, noise, gate, upgrade, canary, report, export, history)  # the order of `quantperf --help`


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="quantperf", description="Performance regression suite for LLM quantization")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for group in GROUPS:
        group.add_parser(sub)
    return run_command(ap.parse_args(argv))
