"""`quantperf export`: a results.jsonl or summary.json as github-action-benchmark custom JSON or
Bencher BMF, intervals included."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _cmd_export(args) -> int:
    from ..report.export import load_figures, to_bencher, to_github_action_benchmark
    from ._common import write_outputs

    figures = load_figures(args.file)
    if not figures:
        print(f"quantperf: {args.file}: holds no figure to export (no ok result, no gated metric)", file=sys.stderr)
        return 2
    if args.format == "bmf":
        text = json.dumps(to_bencher(figures), indent=2, sort_keys=True) + "\n"
        if not args.out:
            sys.stdout.write(text)
            return 0
        return write_outputs([(args.out, text)])
    directions = {"bigger": [True], "smaller": [False], "both": [True, False]}[args.direction]
    if len(directions) == 2 and not args.out:
        print("quantperf: --format gab writes two files (github-action-benchmark takes one direction per file): "
              "give -o OUT, or --direction bigger|smaller for one list on stdout", file=sys.stderr)
        return 2
    outputs = []
    for bigger in directions:
        text = json.dumps(to_github_action_benchmark(figures, bigger), indent=2) + "\n"
        tool = "customBiggerIsBetter" if bigger else "customSmallerIsBetter"
        if not args.out:
            sys.stdout.write(text)
            return 0
        out = Path(args.out)
        if len(directions) == 2:
            out = out.with_name(f"{out.stem}-{'bigger' if bigger else 'smaller'}-is-better{out.suffix or '.json'}")
        outputs.append((str(out), text))
        print(f"{out}: github-action-benchmark tool {tool}")
    return write_outputs(outputs)


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="a results.jsonl or summary.json as github-action-benchmark custom JSON (gab) or "
                                      "Bencher Metric Format (bmf), intervals included")
    p.add_argument("file", help="results.jsonl or summary.json")
    p.add_argument("--format", choices=("gab", "bmf"), required=True)
    p.add_argument("-o", "--out", metavar="FILE",
                   help="where to write (default: stdout); gab with both directions writes FILE-bigger-is-better.json "
                        "and FILE-smaller-is-better.json")
    p.add_argument("--direction", choices=("both", "bigger", "smaller"), default="both",
                   help="gab: the metrics where bigger is better (customBiggerIsBetter), smaller is better "
                        "(customSmallerIsBetter), or both (two files)")
    p.set_defaults(fn=_cmd_export)
